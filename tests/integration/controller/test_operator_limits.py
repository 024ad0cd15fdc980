"""The operator's own limits on the real apiserver (issue 21), read from its /metrics: a failing reconcile backs
off and watch events of the same generation do not cut the wait short (a new generation runs at once), no more
reconciles run at once than configured, and nothing the operator keeps per object outlives the object.

Each test runs its own operator for its namespace only (with a metrics port and a bound of 2 concurrent
reconciles); the session's operator is stopped meanwhile, so that the counts are this operator's alone.
"""

from __future__ import annotations

import json
import re
import socket
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    GROUP,
    VERSION,
    OperatorProcess,
    condition,
    ingresses_refused,
    load_example,
    namespace_operator,
    or_none,
)

LLAMA_8B = json.loads(
    (Path(__file__).resolve().parents[2] / "data" / "model-configs" / "meta-llama--Llama-3.1-8B.json").read_text()
)
BOUND = 2


class Metrics:
    def __init__(self, url: str) -> None:
        self.url = url

    def text(self) -> str:
        with urllib.request.urlopen(self.url, timeout=10) as response:
            return str(response.read().decode())

    def value(self, name: str, labels: str = "") -> float:
        """One sample (0 when the series is not there yet)."""
        pattern = "^" + re.escape(name + (f"{{{labels}}}" if labels else "")) + r" (\S+)$"
        found = re.search(pattern, self.text(), re.M)
        return float(found.group(1)) if found else 0.0


@pytest.fixture
def own_operator(
    operator_process: OperatorProcess, namespace: str, tmp_path: Path, wait_until: Callable[..., Any]
) -> Iterator[Metrics]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = {"metrics_address": f"127.0.0.1:{port}", "max_concurrent_reconciles": BOUND}
    with namespace_operator(operator_process, namespace, tmp_path, **settings):
        metrics = Metrics(f"http://127.0.0.1:{port}/metrics")
        wait_until(lambda: _answers(metrics), timeout=60, interval=0.2)
        yield metrics


def _answers(metrics: Metrics) -> bool:
    try:
        return "bigmodel_operator_reconciles_running" in metrics.text()
    except OSError:
        return False


def _bigmodel(name: str, model: dict[str, Any] | None = None) -> dict[str, Any]:
    body = load_example("bigmodel-llama-3.1-8b.yaml")
    body["metadata"] = {"name": name}
    body["spec"].pop("credentials", None)
    body["spec"].pop("expose", None)
    body["spec"]["model"] = {"uri": "pvc://models/m", **(model or {"config": LLAMA_8B})}
    return body


def _bm(custom: Any, namespace: str, name: str) -> Any:
    return or_none(custom.get_namespaced_custom_object, GROUP, VERSION, namespace, "bigmodels", name)


def test_a_failing_reconcile_backs_off_and_events_of_the_same_generation_do_not_reset_it(
    own_operator: Metrics, custom: Any, namespace: str, kubectl: Callable[..., Any], wait_until: Callable[..., Any]
) -> None:
    errors = 'kind="BigModel",result="error"'
    with ingresses_refused(kubectl, namespace):
        body = _bigmodel("refused")
        body["spec"]["expose"] = {"ingress": {"host": "llm.example.com"}}
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", body)
        wait_until(
            lambda: (
                (bm := _bm(custom, namespace, "refused")) and condition(bm, "Ready").get("reason") == "ChildRejected"
            ),
            timeout=60,
        )
        # 25 s of watch events for the same generation (annotations: MODIFIED, generation unchanged), 4 a second.
        start, failed_before = time.monotonic(), own_operator.value("bigmodel_operator_reconciles_total", errors)
        i = 0
        while time.monotonic() - start < 25:
            patch = {"metadata": {"annotations": {"example.com/poke": str(i)}}}
            custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", "refused", patch)
            i += 1
            time.sleep(0.25)
        runs = own_operator.value("bigmodel_operator_reconciles_total", errors) - failed_before
        print(f"{i} events of the same generation in 25 s: {runs:.0f} failed reconciles")
        # Backoff 1, 2, 4, 8, 16 s (+ up to 20 %): at most 5 retries in 25 s, whatever the events; one per event
        # would be ~100.
        assert 1 <= runs <= 6, runs
        assert own_operator.value("bigmodel_operator_reconciles_backing_off") == 1
        # A new generation is a new try, at once (not after the pending backoff of up to 32 s).
        before = own_operator.value("bigmodel_operator_reconciles_total", errors)
        changed = {"spec": {"expose": {"ingress": {"host": "other.example.com"}}}}
        custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", "refused", changed)
        wait_until(
            lambda: own_operator.value("bigmodel_operator_reconciles_total", errors) > before,
            timeout=10,
            interval=0.1,
            what="a reconcile of the new generation",
        )


def test_no_more_reconciles_run_at_once_than_configured(
    own_operator: Metrics, api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    """Slow reconciles (hostile configs take a while to refuse) pile up: the operator runs BOUND at a time."""
    from kubernetes import client

    deep = "[" * 100_000 + "]" * 100_000  # refused as out of bounds after a costly parse
    client.CoreV1Api(api_client).create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="deep"), data={"config.json": deep})
    )
    seen: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.append(own_operator.value("bigmodel_operator_reconciles_running"))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        names = [f"slow-{i}" for i in range(8)] + [f"plain-{i}" for i in range(8)]
        for name in names:
            model = {"configMapRef": {"name": "deep"}} if name.startswith("slow") else None
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", _bigmodel(name, model))
        for name in names:
            wait_until(lambda n=name: (bm := _bm(custom, namespace, n)) and condition(bm, "Ready"), timeout=120)
    finally:
        stop.set()
        sampler.join()
    print(f"reconciles running, sampled {len(seen)} times: max {max(seen):.0f}")
    assert max(seen) <= BOUND, max(seen)
    assert BOUND in seen, "the burst never filled the bound (nothing was measured)"


def test_nothing_the_operator_keeps_outlives_the_objects(
    own_operator: Metrics, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    """Create BigModels and FineTuneJobs deploying to them, let them settle, delete them: every entry the operator
    kept for them (cache, indexes, runner, generated keys, adapter phases, cold starts) goes with them."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from manifests import cluster_finetunejob

    for i in range(4):
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", _bigmodel(f"m{i}"))
        job = cluster_finetunejob(f"j{i}")
        job["spec"]["deployTo"] = {"bigModel": f"m{i}", "adapterName": f"a{i}"}
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", job)
    for i in range(4):
        wait_until(lambda n=f"m{i}": (bm := _bm(custom, namespace, n)) and condition(bm, "Ready"), timeout=120)
    held = own_operator.value("bigmodel_operator_remembered_entries")
    assert held > 0
    for i in range(4):
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", f"j{i}")
        custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", f"m{i}")
    # Garbage collection removes the children; the watch tells the operator of each deletion.
    deadline = time.monotonic() + 120
    while own_operator.value("bigmodel_operator_remembered_entries") and time.monotonic() < deadline:
        time.sleep(0.5)
    text = own_operator.text()
    kept = [line for line in text.splitlines() if re.match(r"bigmodel_operator_(remembered|tracked)", line)]
    assert own_operator.value("bigmodel_operator_remembered_entries") == 0, kept
    print(f"remembered entries: {held:.0f} with 4 BigModels and 4 FineTuneJobs, 0 after their deletion")
