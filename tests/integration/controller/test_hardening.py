"""Hostile and mistaken input against the real operator process (issue 10): a burst of hostile
configs must not delay an innocent BigModel, the operator stops promptly on SIGTERM, a child write
the apiserver refuses reaches status and an Event (a refused NetworkPolicy keeps every Ray pod out), every
kubectl command the docs show works, and the NetworkPolicy is accepted by the apiserver."""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .conftest import (
    GROUP,
    REPO,
    VERSION,
    OperatorProcess,
    condition,
    ingresses_refused,
    load_example,
    or_none,
    writes_refused,
)

pytestmark = pytest.mark.usefixtures("operator_process")

LLAMA_8B = json.loads(
    (Path(__file__).resolve().parents[2] / "data" / "model-configs" / "meta-llama--Llama-3.1-8B.json").read_text()
)


def _bigmodel(name: str, model: dict[str, Any], **spec: Any) -> dict[str, Any]:
    body = load_example("bigmodel-llama-3.1-8b.yaml")
    body["metadata"] = {"name": name}
    body["spec"].pop("credentials", None)
    body["spec"].pop("expose", None)
    body["spec"]["model"] = {"uri": "pvc://models/m", **model}
    body["spec"].update(spec)
    return body


def _create(custom: Any, namespace: str, body: dict[str, Any]) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", body)


def _bm(custom: Any, namespace: str, name: str) -> Any:
    return or_none(custom.get_namespaced_custom_object, GROUP, VERSION, namespace, "bigmodels", name)


def _has_status(custom: Any, namespace: str, name: str) -> Any:
    body = _bm(custom, namespace, name)
    return body if body and condition(body, "Planned") else None


def _configmap(api_client: Any, namespace: str, name: str, text: str) -> None:
    from kubernetes import client

    client.CoreV1Api(api_client).create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name), data={"config.json": text})
    )


def _hostile(api_client: Any, custom: Any, namespace: str, count: int) -> list[tuple[str, str]]:
    """Create `count` hostile BigModels; returns (name, expected reason)."""
    _configmap(api_client, namespace, "deep", "[" * 100_000 + "]" * 100_000)
    _configmap(api_client, namespace, "wide", '{"x": "' + "y" * 600_000 + '"}')
    kinds: list[tuple[dict[str, Any], str]] = [
        ({"config": {**LLAMA_8B, "num_hidden_layers": 10**15}}, "ModelConfigOutOfBounds"),
        ({"config": {**LLAMA_8B, "vocab_size": 2**62}}, "ModelConfigOutOfBounds"),
        ({"configMapRef": {"name": "deep"}}, "ModelConfigOutOfBounds"),
        ({"configMapRef": {"name": "wide"}}, "ModelConfigOutOfBounds"),
    ]
    made = []
    for i in range(count):
        model, reason = kinds[i % len(kinds)]
        _create(custom, namespace, _bigmodel(f"hostile-{i}", model))
        made.append((f"hostile-{i}", reason))
    return made


def test_hostile_burst_does_not_delay_an_innocent_bigmodel(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    start = time.monotonic()
    _create(custom, namespace, _bigmodel("innocent-a", {"config": LLAMA_8B}))
    wait_until(lambda: _has_status(custom, namespace, "innocent-a"), timeout=60, interval=0.02)
    alone = time.monotonic() - start

    hostile = _hostile(api_client, custom, namespace, 24)
    start = time.monotonic()
    _create(custom, namespace, _bigmodel("innocent-b", {"config": LLAMA_8B}))
    bm = wait_until(lambda: _has_status(custom, namespace, "innocent-b"), timeout=60, interval=0.02)
    during = time.monotonic() - start
    print(f"innocent BigModel status: {alone:.2f}s alone, {during:.2f}s right after 24 hostile ones")
    assert condition(bm, "Planned")["status"] == "True", bm["status"]
    # Measured, not a speed test: a stalled event loop showed up as no status at all (timeout above);
    # the bound is generous for a shared 2-core machine (+10 s failed once at load average 8: 15.9 s vs
    # 2.0 s). It still catches hostile objects served one after another (24 × ~1.3 s or more).
    assert during < alone + 30, f"{during:.2f}s vs {alone:.2f}s alone"

    for name, reason in hostile:
        body = wait_until(lambda n=name: _has_status(custom, namespace, n), timeout=60)
        ready = condition(body, "Ready")
        assert ready["reason"] == reason, (name, ready)
        assert len(ready["message"]) < 2000
        assert _rayservice(custom, namespace, name) is None, f"{name}: nothing may be deployed"
    # The innocent one is deployed, behind its NetworkPolicy, which the apiserver accepted.
    rs = wait_until(lambda: _rayservice(custom, namespace, "innocent-b"), timeout=30)
    assert rs["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}, "accepted by KubeRay's CRD"
    policy = wait_until(lambda: _network_policy(api_client, namespace, "innocent-b-ray"), timeout=30)
    assert policy.spec.pod_selector.match_labels["bigmodel.io/bigmodel"] == "innocent-b"
    assert [p.port for p in policy.spec.ingress[0].ports] == [8000]
    # Issue 21: the dashboard only from KubeRay's own namespace (namespaceSelector AND podSelector).
    kuberay = policy.spec.ingress[2]._from[0]
    assert kuberay.namespace_selector.match_labels == {"kubernetes.io/metadata.name": "kuberay-system"}
    assert kuberay.pod_selector.match_labels == {"app.kubernetes.io/name": "kuberay-operator"}
    pods = rs["spec"]["rayClusterConfig"]
    for template in (pods["headGroupSpec"]["template"], pods["workerGroupSpecs"][0]["template"]):
        container = template["spec"]["containers"][0]
        assert container["resources"]["requests"]["ephemeral-storage"], container["name"]
        assert all(v["emptyDir"].get("sizeLimit") for v in template["spec"]["volumes"] if "emptyDir" in v)


def _rayservice(custom: Any, namespace: str, name: str) -> Any:
    return or_none(custom.get_namespaced_custom_object, "ray.io", "v1", namespace, "rayservices", name)


def _network_policy(api_client: Any, namespace: str, name: str) -> Any:
    from kubernetes import client

    return or_none(client.NetworkingV1Api(api_client).read_namespaced_network_policy, name, namespace)


def test_operator_stops_within_5s_of_sigterm_with_hostile_objects(
    api_client: Any,
    custom: Any,
    namespace: str,
    kubeconfig: Path,
    operator_process: OperatorProcess,
    wait_until: Callable[..., Any],
) -> None:
    extra = OperatorProcess(
        operator_process.kubeconfig,
        operator_process.log_path.parent,
        operator_process.config_file,
        extra_args=("--namespace", namespace),
        log_name="operator-sigterm.log",
    )
    extra.start()
    try:
        hostile = _hostile(api_client, custom, namespace, 8)
        for name, _ in hostile:
            wait_until(lambda n=name: _has_status(custom, namespace, n), timeout=60)
        time.sleep(1)  # let the extra operator take its share of the work
        assert extra.proc is not None and extra.proc.poll() is None
        start = time.monotonic()
        extra.proc.send_signal(signal.SIGTERM)
        extra.proc.wait(timeout=30)
        took = time.monotonic() - start
        print(f"operator exited {took:.2f}s after SIGTERM")
        assert took < 5, f"exited {took:.2f}s after SIGTERM; log:\n{extra.log_tail()}"
    finally:
        extra.stop()


def test_a_child_write_the_apiserver_refuses_reaches_status_and_an_event(
    api_client: Any, custom: Any, namespace: str, kubectl: Callable[..., Any], wait_until: Callable[..., Any]
) -> None:
    """An admission policy (like a Gatekeeper or Kyverno rule) refuses the Ingress: the BigModel says so."""
    with ingresses_refused(kubectl, namespace) as refusal:
        body = _bigmodel("refused-ingress", {"config": LLAMA_8B})
        body["spec"]["expose"] = {"ingress": {"host": "llm.example.com"}}
        _create(custom, namespace, body)

        def rejected() -> Any:
            bm = _bm(custom, namespace, "refused-ingress")
            return bm if bm and condition(bm, "Ready").get("reason") == "ChildRejected" else None

        bm = wait_until(rejected, timeout=60)
        message = condition(bm, "Ready")["message"]
        assert "Ingress refused-ingress" in message and refusal in message, message
        events = wait_until(
            lambda: [
                e
                for e in _events(api_client, namespace, "refused-ingress")
                if e.type == "Warning" and e.reason == "ChildRejected"
            ],
            timeout=30,
        )
        assert refusal in events[0].message


def test_a_refused_network_policy_keeps_every_ray_pod_out(
    api_client: Any, custom: Any, namespace: str, kubectl: Callable[..., Any], wait_until: Callable[..., Any]
) -> None:
    """The policy and the RayService are written at once; the gate is the pods' ServiceAccount, written only after
    the policy (reconcile/bigmodel_reconcile.py: _apply_children). With the policy refused, the apiserver itself
    refuses a Ray pod (no account); once the policy is allowed, the account follows."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    core = client.CoreV1Api(api_client)
    with writes_refused(kubectl, namespace, "networkpolicies", "NetworkPolicies are held back here"):
        _create(custom, namespace, _bigmodel("gated", {"config": LLAMA_8B}))

        def rejected() -> Any:
            bm = _bm(custom, namespace, "gated")
            return bm if bm and condition(bm, "Ready").get("reason") == "ChildRejected" else None

        message = condition(wait_until(rejected, timeout=60), "Ready")["message"]
        assert "NetworkPolicy gated-ray" in message and "held back" in message, message
        assert or_none(core.read_namespaced_service_account, "gated-serving", namespace) is None
        pod = client.V1Pod(
            metadata=client.V1ObjectMeta(name="as-a-ray-pod"),
            spec=client.V1PodSpec(
                service_account_name="gated-serving", containers=[client.V1Container(name="c", image="x")]
            ),
        )
        with pytest.raises(ApiException) as refused:  # what KubeRay's pod create gets
            core.create_namespaced_pod(namespace, pod)
        assert refused.value.status == 403 and "gated-serving" in str(refused.value.body), refused.value.body
    wait_until(lambda: or_none(core.read_namespaced_service_account, "gated-serving", namespace), timeout=90)
    assert kubectl("get", "networkpolicy", "gated-ray", "-n", namespace, check=False).returncode == 0


def _events(api_client: Any, namespace: str, name: str) -> list[Any]:
    from kubernetes import client

    items = client.CoreV1Api(api_client).list_namespaced_event(namespace).items
    return [e for e in items if e.involved_object.name == name]


# --- every kubectl command the docs show, against the real apiserver ------------------------------

DOCS = ["docs/operations.md", "docs/quickstart.md", "README.md"]
_COMMAND = re.compile(
    r"kubectl (?:-n \S+ )?(?:get|describe) (?:bm|bigmodels?|ftj|finetunejobs?|bigmodel-all)\b[^`\n#|)]*"
)


def doc_commands() -> list[str]:
    found: list[str] = []
    for doc in DOCS:
        for match in _COMMAND.finditer((REPO / doc).read_text()):
            command = match.group(0).strip()
            if command not in found:
                found.append(command)
    return found


def test_the_docs_show_kubectl_commands_for_our_kinds() -> None:
    commands = doc_commands()
    assert any("describe bigmodel NAME" in c for c in commands), commands
    assert any(" get bm " in c for c in commands), commands


@pytest.mark.parametrize("command", doc_commands())
def test_every_documented_kubectl_command_works(
    command: str, custom: Any, namespace: str, kubectl: Callable[..., Any]
) -> None:
    bm = load_example("bigmodel-llama-3.1-8b.yaml")
    ftj = load_example("finetunejob-lora.yaml")
    _create(custom, namespace, bm)
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", ftj)
    is_ftj = re.search(r"\b(ftj|finetunejobs?)\b", command) is not None
    name = ftj["metadata"]["name"] if is_ftj else bm["metadata"]["name"]
    argv = command.split()[1:]
    argv = [name if a == "NAME" else a for a in argv]
    if argv[:1] == ["-n"]:
        argv = argv[2:]
    argv = [a.strip("'") for a in argv]
    result = kubectl("-n", namespace, *argv, check=False)
    assert result.returncode == 0, f"{command}: {result.stderr}"
    if " NAME" in command or name in command:
        assert name in result.stdout or "-o" in argv, result.stdout
