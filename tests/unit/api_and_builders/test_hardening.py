"""Hostile and mistaken input on the operator side: admission rules, names, config bounds, failures
that must reach status (issue 10). The apiserver half of each rule is in
tests/integration/controller/test_crds_on_apiserver.py."""

from __future__ import annotations

import asyncio
import json
import re
import threading
from typing import Any

import pytest
from pydantic import ValidationError

from bigmodel_operator import crdgen
from bigmodel_operator.api import BigModelSpec, FineTuneJobSpec
from bigmodel_operator.api.base import (
    DNS_1035_LABEL,
    HIDDEN_CHARACTER_RE2,
    PARENT_SEGMENT_RE2,
    PRIVATE_HTTP_HOST_RE2,
    has_parent_segment,
    re2_literal,
)
from bigmodel_operator.conditions import Reason, get_condition
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.kube import ApiError
from bigmodel_operator.reconcile.bigmodel_reconcile import BigModelReconciler
from bigmodel_operator.reconcile.children import AlreadyReportedError
from bigmodel_operator.reconcile.model_source import (
    MAX_CONFIG_BYTES,
    SMALL_CONFIG_UNITS,
    check_inline_config,
    is_small_value,
    parse_config_text,
)
from bigmodel_operator.reconcile.offload import off_loop
from bigmodel_operator.reconcile.spec_checks import hidden_path_problems, name_problem, suggest_name
from bigmodel_operator.reconcile.state import ClusterState

from .conftest import load_example

# --- '..' path segments -------------------------------------------------------------------------

TRAVERSALS = ["pvc://models/../../../etc", "hf://../..", "pvc://adapters/../../../tmp/x", "file:///models/.."]


@pytest.mark.parametrize("uri", TRAVERSALS)
def test_parent_segments_are_detected(uri: str) -> None:
    assert has_parent_segment(uri)


@pytest.mark.parametrize("uri", ["pvc://models/llama..v2", "hf://org/name", "s3://b/..hidden/x", "pvc://m/a.b/c"])
def test_dots_inside_a_name_are_fine(uri: str) -> None:
    assert not has_parent_segment(uri)


def _bm_spec(**model: Any) -> dict[str, Any]:
    return {"model": {"uri": "hf://org/name", **model}}


@pytest.mark.parametrize(
    "spec",
    [
        _bm_spec(uri="pvc://models/../../../etc"),
        _bm_spec(uri="hf://../.."),
        _bm_spec(tokenizer="../../../etc/passwd"),
        _bm_spec(tokenizer="pvc://models/../../etc/passwd"),
        _bm_spec(revision="main\r\nX-Injected: 1"),
        _bm_spec(revision="../../x"),
        {"model": {"uri": "hf://org/name"}, "adapters": [{"name": "a", "uri": "pvc://ad/../../x"}]},
        {"model": {"uri": "hf://org/name"}, "tolerations": [{"key": "k", "operator": "Exists", "value": "v"}]},
        {"model": {"uri": "hf://org/name"}, "tolerations": [{"operator": "Equal", "value": "v"}]},
        {"model": {"uri": "hf://org/name"}, "tolerations": [{"key": "k", "tolerationSeconds": 5}]},
        {"model": {"uri": "hf://org/name"}, "expose": {"ingress": {"className": "my_class"}}},
        # issue 21: hidden characters, encoded parent segments, the inline config's shape, CPU parallelism
        _bm_spec(uri="hf://org/na\u00a0me"),
        _bm_spec(uri="hf://org/name\u200b"),
        _bm_spec(uri="pvc://models/%2e%2e/x"),
        _bm_spec(tokenizer="pvc://models/..\\x"),
        {"model": {"uri": "hf://org/name"}, "runtime": {"image": "repo/img:1\u202e"}},
        _bm_spec(config={"x": "y" * (1 << 20)}),
        _bm_spec(config={"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}),
        _bm_spec(config={"a": list(range(5000))}),
        {"model": {"uri": "hf://org/name"}, "resources": {"gpu": {"count": 0}}, "engine": {"tensorParallelSize": 4}},
        {"model": {"uri": "hf://org/name"}, "resources": {"gpu": {"count": 0}}, "engine": {"pipelineParallelSize": 2}},
    ],
)
def test_bigmodel_specs_the_operator_refuses(spec: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        BigModelSpec.model_validate(spec)


def test_finetunejob_paths_and_adapter_name_are_validated() -> None:
    body = load_example("finetunejob-lora.yaml")
    FineTuneJobSpec.model_validate(body["spec"])
    for path, value in (
        (("output", "uri"), "pvc://adapters/../../../tmp/x"),
        (("dataset", "uri"), "pvc://data/../../etc/shadow"),
        (("deployTo", "adapterName"), "my adapter"),
    ):
        spec = {**body["spec"], path[0]: {**(body["spec"].get(path[0]) or {"bigModel": "m"}), path[1]: value}}
        with pytest.raises(ValidationError):
            FineTuneJobSpec.model_validate(spec)


def _fields_with_rule(node: Any, needle: str, path: str = "") -> set[str]:
    found = {path} if any(needle in r["rule"] for r in node.get("x-kubernetes-validations", [])) else set()
    for name, sub in (node.get("properties") or {}).items():
        found |= _fields_with_rule(sub, needle, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        found |= _fields_with_rule(node["items"], needle, f"{path}[]")
    return found


URI_FIELDS = {
    "BigModel": {
        ".spec.model.uri",
        ".spec.model.revision",
        ".spec.model.tokenizer",
        ".spec.adapters[].uri",
        ".spec.feedback.sink.pvc.path",
        ".spec.feedback.sink.uri",
        ".spec.runtime.image",
    },
    "FineTuneJob": {
        ".spec.baseModel.uri",
        ".spec.baseModel.revision",
        ".spec.dataset.uri",
        ".spec.output.uri",
        ".spec.evaluation.datasetUri",
    },
}


@pytest.mark.parametrize("info", [crdgen.BIGMODEL, crdgen.FINETUNEJOB], ids=lambda i: i.kind)
def test_every_uri_field_carries_the_cel_rules(info: crdgen.CrdInfo) -> None:
    """No '..' segment (also encoded) and no hidden character in every URI; http(s) hosts where fetched."""
    root = crdgen.crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _fields_with_rule(root, re2_literal(PARENT_SEGMENT_RE2)) == URI_FIELDS[info.kind]
    assert _fields_with_rule(root, re2_literal(HIDDEN_CHARACTER_RE2)) == URI_FIELDS[info.kind]
    fetched = {".spec.dataset.uri", ".spec.evaluation.datasetUri"} if info.kind == "FineTuneJob" else set()
    assert _fields_with_rule(root, re2_literal(PRIVATE_HTTP_HOST_RE2)) == fetched


# --- names KubeRay accepts (its rule: k8s.io/apimachinery IsDNS1035Label) ---------------------------

KUBERAY_NAMES = [
    ("llama-3-1-8b", True),
    ("a", True),
    ("a" * 63, True),
    ("llama-3.1-8b", False),  # dots
    ("8b-chat", False),  # starts with a digit
    ("Llama", False),
    ("chat-", False),
    ("a" * 64, False),
    ("a_b", False),
]


@pytest.mark.parametrize(("name", "valid"), KUBERAY_NAMES)
def test_name_rule_is_kuberays(name: str, valid: bool) -> None:
    assert (name_problem(name) is None) is valid
    rule = next(r["rule"] for r in crdgen.BIGMODEL.root_rules if "matches" in r["rule"])
    pattern = re.search(r"matches\('(.*)'\)", rule)
    assert pattern and pattern.group(1) == DNS_1035_LABEL
    if len(name) <= 40:  # the CRD's other rule bounds the length
        assert bool(re.match(DNS_1035_LABEL, name)) is valid


@pytest.mark.parametrize("name", ["llama-3.1-8b", "8b-chat", "x.y.z", "9"])
def test_suggested_names_pass_the_rule(name: str) -> None:
    assert name_problem(suggest_name(name)) is None
    assert suggest_name(name) in (name_problem(name) or "")


def test_file_sources_under_the_pods_scratch_mounts_are_refused() -> None:
    """The CPU example's model used to sit in /tmp, which the serving pods' emptyDir hides."""
    spec = load_example("bigmodel-tiny-cpu.yaml")["spec"]
    assert hidden_path_problems(BigModelSpec.model_validate(spec)) == []
    hidden = {
        **spec,
        "model": {**spec["model"], "uri": "file:///tmp/bigmodel/tiny-llama", "tokenizer": "file:///dev/shm/tok"},
        "adapters": [{"name": "a", "uri": "file:///home/ray/.cache/a"}, {"name": "b", "uri": "file:///opt/b"}],
    }
    problems = hidden_path_problems(BigModelSpec.model_validate(hidden))
    assert [p.split(" ")[0] for p in problems] == ["spec.model.uri", "spec.model.tokenizer", "spec.adapters[0].uri"]
    assert "lies under /tmp, where the serving pods mount an empty scratch volume" in problems[0]
    beside = {**spec, "model": {**spec["model"], "uri": "file:///tmpfiles/model"}}
    assert hidden_path_problems(BigModelSpec.model_validate(beside)) == []


def test_categories_do_not_shadow_a_resource_name() -> None:
    names = {n for info in crdgen.ALL_CRDS for n in (info.plural, info.singular, *info.short_names)}
    for info in crdgen.ALL_CRDS:
        assert not names & set(info.categories), f"{info.kind}: a category named like a resource breaks kubectl"


# --- config.json bounds -------------------------------------------------------------------------


def test_a_deeply_nested_configmap_is_refused_without_recursion_error() -> None:
    result = parse_config_text("[" * 100_000 + "]" * 100_000, "ConfigMap c/config.json")
    assert result.config is None and result.reason == Reason.MODEL_CONFIG_OUT_OF_BOUNDS
    nested = '{"a":' * 40 + "1" + "}" * 40  # parses, but deeper than any config.json
    assert parse_config_text(nested, "x").reason == Reason.MODEL_CONFIG_OUT_OF_BOUNDS


def test_oversized_configs_are_refused() -> None:
    big = {"x": "y" * MAX_CONFIG_BYTES}
    assert check_inline_config(big).reason == Reason.MODEL_CONFIG_OUT_OF_BOUNDS
    assert "bytes" in parse_config_text('{"x": "' + "y" * MAX_CONFIG_BYTES + '"}', "cm").message


def test_only_a_small_inline_config_is_checked_on_the_event_loop() -> None:
    """A real config.json is checked in place; a large one (many keys, a long string, a long list) goes to a
    thread, and deciding that costs at most SMALL_CONFIG_UNITS steps."""
    example = {"architectures": ["LlamaForCausalLM"], "hidden_size": 128, "rope_scaling": {"type": "linear"}}
    assert is_small_value(example)
    assert not is_small_value({"x": "y" * SMALL_CONFIG_UNITS})
    assert not is_small_value({f"k{i}": i for i in range(SMALL_CONFIG_UNITS)})
    assert not is_small_value([[0] * 1000] * 1000)  # a million leaves: refused after the budget, not walked


def test_a_normal_config_passes(tmp_path: Any) -> None:
    assert parse_config_text('{"hidden_size": 8}', "cm").config == {"hidden_size": 8}
    assert parse_config_text("[1]", "cm").reason == Reason.MODEL_CONFIG_UNAVAILABLE  # not an object


# --- work off the event loop --------------------------------------------------------------------


def test_off_loop_returns_raises_and_gives_up() -> None:
    release = threading.Event()

    async def main() -> None:
        assert await off_loop(lambda: 41 + 1) == 42
        with pytest.raises(ZeroDivisionError):
            await off_loop(lambda: 1 // 0)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)

        task = asyncio.create_task(ticker())
        with pytest.raises(TimeoutError):
            await off_loop(lambda: release.wait(30), limit_s=0.3)
        task.cancel()
        assert ticks > 3, "the loop kept running while the work was stuck"

    asyncio.run(main())
    release.set()


def test_off_loop_reuses_its_threads_and_a_stuck_call_holds_up_no_other() -> None:
    """Threads are reused (starting one per call was measurable CPU in a burst: issue 21); a call that overran its
    limit keeps its thread, and the next call gets another one."""
    from bigmodel_operator.reconcile import offload

    release = threading.Event()

    async def main() -> None:
        await off_loop(lambda: None)  # a thread now idles
        started = offload._threads.started
        for i in range(20):
            assert await off_loop(lambda i=i: i) == i
        assert offload._threads.started == started, "each call started a thread"
        with pytest.raises(TimeoutError):
            await off_loop(lambda: release.wait(30), limit_s=0.2)
        assert await asyncio.wait_for(off_loop(lambda: "free"), 2) == "free"

    asyncio.run(main())
    release.set()


# --- every failure reaches status and an Event --------------------------------------------------


class FakeKube:
    """Records writes; refuses applies of the kinds in `refuse` with the apiserver's 422."""

    def __init__(self, refuse: set[str]) -> None:
        self.refuse = refuse
        self.status: dict[str, Any] = {}

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        return None

    async def apply(self, obj: dict[str, Any], *, if_absent: bool = False) -> dict[str, Any]:
        if obj["kind"] in self.refuse:
            message = 'Ingress.networking.k8s.io "x" is invalid: metadata.annotations: Invalid value: "a b"'
            error = ApiError(422, json.dumps({"message": message}), "PATCH", "/x")
            error.kind_name = f"{obj['kind']} {obj['metadata']['name']}"
            raise error
        return {**obj, "metadata": {**obj["metadata"], "uid": "child"}}

    async def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.status = status
        return {}


def _reconciler(kube: FakeKube) -> tuple[BigModelReconciler, list[tuple[str, str, str]]]:
    events: list[tuple[str, str, str]] = []
    reconciler = BigModelReconciler(
        kube,  # type: ignore[arg-type]
        ClusterState(),
        OperatorConfig(),
        lambda body, type_, reason, message: events.append((type_, reason, message)),
    )
    return reconciler, events


def test_a_refused_child_write_lands_in_a_condition_and_an_event() -> None:
    body = load_example("bigmodel-llama-3.1-8b.yaml")
    body["spec"].pop("credentials", None)  # no Secret to find in the fake
    kube = FakeKube(refuse={"Ingress"})
    reconciler, events = _reconciler(kube)
    with pytest.raises(AlreadyReportedError):
        asyncio.run(reconciler.reconcile(body))
    ready = get_condition(kube.status["conditions"], "Ready") or {}
    assert ready["status"] == "False" and ready["reason"] == Reason.CHILD_REJECTED
    assert "Ingress llama-3-1-8b" in ready["message"] and "metadata.annotations" in ready["message"]
    assert ("Warning", Reason.CHILD_REJECTED) in [(t, r) for t, r, _ in events]


def test_a_reconcile_that_raises_is_reported() -> None:
    body = load_example("bigmodel-llama-3.1-8b.yaml")
    kube = FakeKube(refuse=set())
    reconciler, events = _reconciler(kube)
    asyncio.run(reconciler.report_failure(body, RuntimeError("boom")))
    ready = get_condition(kube.status["conditions"], "Ready") or {}
    assert ready["reason"] == Reason.RECONCILE_ERROR and "boom" in ready["message"]
    assert events and events[0][:2] == ("Warning", Reason.RECONCILE_ERROR)


def test_spec_caused_plan_errors_deploy_nothing() -> None:
    body = load_example("bigmodel-llama-3.1-8b.yaml")
    body["spec"]["model"]["config"] = {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "intermediate_size": 14336,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
    }
    body["spec"].setdefault("engine", {})["tensorParallelSize"] = 3
    body["spec"]["resources"] = {"gpu": {"count": 3}}
    body["spec"].pop("credentials", None)
    kube = FakeKube(refuse={"RayService", "Ingress"})  # an apply would raise: none may happen
    reconciler, _ = _reconciler(kube)
    asyncio.run(reconciler.reconcile(body))
    ready = get_condition(kube.status["conditions"], "Ready") or {}
    assert ready["reason"] == Reason.INVALID_PARALLELISM, ready


def test_hostile_layer_count_is_refused_and_deploys_nothing() -> None:
    body = load_example("bigmodel-llama-3.1-8b.yaml")
    body["spec"]["model"]["config"] = {
        "hidden_size": 4096,
        "num_hidden_layers": 10**15,
        "num_attention_heads": 32,
        "intermediate_size": 14336,
        "vocab_size": 128256,
    }
    body["spec"].pop("credentials", None)
    kube = FakeKube(refuse={"RayService", "Ingress"})
    reconciler, _ = _reconciler(kube)
    asyncio.run(reconciler.reconcile(body))
    ready = get_condition(kube.status["conditions"], "Ready") or {}
    assert ready["reason"] == Reason.MODEL_CONFIG_OUT_OF_BOUNDS and "num_hidden_layers" in ready["message"]


@pytest.mark.parametrize(
    ("reason", "phase"),
    [
        (Reason.INVALID_PARALLELISM, "Failed"),
        (Reason.MODEL_CONFIG_OUT_OF_BOUNDS, "Failed"),
        (Reason.UNSUPPORTED_MODEL_FAMILY, "Failed"),
        (Reason.PLANNING_TIMED_OUT, "Pending"),  # may pass on a retry
        (Reason.CHILD_REJECTED, "Pending"),  # retried with backoff
    ],
)
def test_finetunejob_spec_caused_plan_errors_are_final(reason: str, phase: str) -> None:
    from bigmodel_operator.conditions import Blocker
    from bigmodel_operator.status.finetunejob_status import FineTuneJobObservation, compute_status

    obs = FineTuneJobObservation(1, None, reason, "why", "j-train", "pvc://out/a")
    obs.blockers.append(Blocker(reason, "why"))
    status = compute_status(obs, None)
    assert status["phase"] == phase
    assert (get_condition(status["conditions"], "Complete") or {})["reason"] == reason


# --- issue 21: hidden characters, internal http hosts, the inline config's shape, CPU parallelism ----


def test_a_real_nested_config_and_cpu_without_parallelism_pass() -> None:
    quantized = {"quantization_config": {"config_groups": {"group_0": {"weights": {"num_bits": 4}}}}, "rope": None}
    BigModelSpec.model_validate(_bm_spec(config=quantized))
    BigModelSpec.model_validate({**_bm_spec(), "resources": {"gpu": {"count": 0}}, "engine": {"tensorParallelSize": 1}})


@pytest.mark.parametrize(
    "uri",
    [
        "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://2852039166/",
        "https://localhost/x.jsonl",
        "http://[::ffff:10.0.0.1]/x",
        "https://example.com/da\u00a0ta.jsonl",
    ],
)
def test_finetunejob_datasets_on_internal_hosts_are_refused(uri: str) -> None:
    body = load_example("finetunejob-lora.yaml")
    for field in ("dataset", "evaluation"):
        spec = dict(body["spec"])
        if field == "dataset":
            spec["dataset"] = {**spec["dataset"], "uri": uri}
        else:
            spec["evaluation"] = {"datasetUri": uri}
        with pytest.raises(ValidationError):
            FineTuneJobSpec.model_validate(spec)


def test_a_public_http_dataset_passes() -> None:
    body = load_example("finetunejob-lora.yaml")
    FineTuneJobSpec.model_validate(
        {**body["spec"], "dataset": {**body["spec"]["dataset"], "uri": "https://example.com/d.jsonl"}}
    )


def test_the_crds_are_not_in_the_all_category() -> None:
    """`kubectl delete all --all` must not delete BigModels and FineTuneJobs."""
    for info in crdgen.ALL_CRDS:
        assert "all" not in crdgen.crd(info)["spec"]["names"]["categories"]


def test_trainer_disk_follows_the_plan() -> None:
    from bigmodel_operator.builders.volumes import trainer_scratch_sizes

    rendered = {
        "base_model": {"uri": "hf://org/m"},
        "dataset": {"uri": "https://example.com/d.jsonl", "max_file_bytes": 2 * 2**30},
        "output": {"uri": "s3://bucket/out"},
    }
    plan = {"weightBytes": 16 * 2**30, "checkpointGiB": 0.2, "method": "lora"}
    # 4 cache + 10 tmp + 17 weights (+5 %) + 2 dataset + 3 staged checkpoints of 1 GiB (rounded up)
    assert trainer_scratch_sizes(rendered, plan, None, "100Gi").total == "36Gi"
    assert trainer_scratch_sizes(rendered, None, None, "100Gi").total == "100Gi"
    assert trainer_scratch_sizes(rendered, plan, "500Gi", "100Gi").cache == "500Gi"
    mounted = {"base_model": {"uri": "pvc://m/x", "local_path": "/mnt/x"}, "dataset": {"uri": "pvc://d/x"}}
    assert trainer_scratch_sizes(mounted, None, None, "100Gi").total == "14Gi"
