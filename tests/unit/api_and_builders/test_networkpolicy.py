"""The per-BigModel NetworkPolicy: its rules, evaluated the way a CNI evaluates them (issue 10, item 9)."""

from __future__ import annotations

from typing import Any

import pytest

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.networkpolicy import build_network_policy
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.config import OperatorConfig

from .conftest import assert_golden, load_example

CONFIG = OperatorConfig()


def _policy(example: str = "bigmodel-llama-3.1-8b.yaml", **expose: Any) -> dict[str, Any] | None:
    body = load_example(example)
    if expose:
        body["spec"].setdefault("expose", {}).update(expose)
    return build_network_policy(body, BigModelSpec.model_validate(body["spec"]), CONFIG)


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def _peer_admits(peer: dict[str, Any], pod: dict[str, Any], own_namespace: str) -> bool:
    if "namespaceSelector" in peer:
        ns_ok = _selects(peer["namespaceSelector"], pod["namespace_labels"])
    else:
        ns_ok = pod["namespace"] == own_namespace
    return ns_ok and ("podSelector" not in peer or _selects(peer["podSelector"], pod["labels"]))


def admitted(policy: dict[str, Any], target_labels: dict[str, str], source: dict[str, Any], port: int) -> bool:
    """Whether `policy` lets `source` reach `port` on a pod with `target_labels` (networking/v1 semantics:
    rules are ORed; within a rule, `from` peers are ORed and ANDed with `ports`; absent means all)."""
    spec = policy["spec"]
    if not _selects(spec["podSelector"], target_labels):
        return True  # not isolated by this policy
    namespace = policy["metadata"]["namespace"]
    for rule in spec.get("ingress") or []:
        peers_ok = "from" not in rule or any(_peer_admits(p, source, namespace) for p in rule["from"])
        ports_ok = "ports" not in rule or any(p.get("port") == port for p in rule["ports"])
        if peers_ok and ports_ok:
            return True
    return False


def _pod_labels(example: str = "bigmodel-llama-3.1-8b.yaml") -> tuple[dict[str, str], dict[str, str]]:
    body = load_example(example)
    spec = BigModelSpec.model_validate(body["spec"])
    rs = build_rayservice(body, spec, placement(spec, None), CONFIG)
    cluster = rs["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["metadata"]["labels"]
    worker = cluster["workerGroupSpecs"][0]["template"]["metadata"]["labels"]
    return head, worker


OUTSIDER = {"namespace": "other", "namespace_labels": {"kubernetes.io/metadata.name": "other"}, "labels": {}}
SAME_NS_POD = {"namespace": "team-a", "namespace_labels": {}, "labels": {"app": "notebook"}}
KUBERAY = {
    "namespace": "kuberay-system",
    "namespace_labels": {"kubernetes.io/metadata.name": "kuberay-system"},
    "labels": {"app.kubernetes.io/name": "kuberay-operator"},
}
# A tenant's pod labelled like KubeRay's operator, in its own namespace (issue 21).
IMPOSTOR = {
    "namespace": "tenant-b",
    "namespace_labels": {"kubernetes.io/metadata.name": "tenant-b"},
    "labels": {"app.kubernetes.io/name": "kuberay-operator"},
}


def test_policy_golden() -> None:
    assert_golden("networkpolicy-llama.yaml", _policy())


@pytest.mark.parametrize("which", [0, 1], ids=["head", "worker"])
def test_only_the_serve_port_is_open_to_other_pods(which: int) -> None:
    policy = _policy()
    assert policy is not None
    target = _pod_labels()[which]
    for source in (OUTSIDER, SAME_NS_POD):
        assert admitted(policy, target, source, CONFIG.serve_port)
        for port in (6379, 8265, 10001, 8080, 52365):
            assert not admitted(policy, target, source, port), (source, port)


def test_ray_pods_reach_each_other_on_every_port() -> None:
    policy = _policy()
    assert policy is not None
    head, worker = _pod_labels()
    peer = {"namespace": "team-a", "namespace_labels": {}, "labels": worker}
    for port in (6379, 8265, 10001, 8080, 52365):
        assert admitted(policy, head, peer, port)


def test_kuberay_operator_reaches_the_dashboard_only() -> None:
    policy = _policy()
    assert policy is not None
    head, _ = _pod_labels()
    assert admitted(policy, head, KUBERAY, 8265)
    assert not admitted(policy, head, KUBERAY, 6379)
    assert not admitted(policy, head, KUBERAY, 10001)


def test_a_pod_labelled_like_kuberay_in_another_namespace_is_an_outsider() -> None:
    policy = _policy()
    assert policy is not None
    head, worker = _pod_labels()
    for target in (head, worker):
        for port in (6379, 8265, 10001, 8080, 52365):
            assert not admitted(policy, target, IMPOSTOR, port), port
    same_ns_impostor = {**IMPOSTOR, "namespace": "team-a", "namespace_labels": {}}
    assert not admitted(policy, head, same_ns_impostor, 8265)


def test_the_kuberay_namespace_and_labels_are_configurable() -> None:
    config = OperatorConfig(kuberay_operator_namespace="ray-system", kuberay_operator_labels={"app": "kuberay"})
    body = load_example("bigmodel-llama-3.1-8b.yaml")
    policy = build_network_policy(body, BigModelSpec.model_validate(body["spec"]), config)
    assert policy is not None
    head, _ = _pod_labels()
    moved = {"namespace": "ray-system", "namespace_labels": {"kubernetes.io/metadata.name": "ray-system"}}
    assert admitted(policy, head, {**moved, "labels": {"app": "kuberay"}}, 8265)
    assert not admitted(policy, head, KUBERAY, 8265)
    assert not admitted(policy, head, {**moved, "labels": {"app": "other"}}, 8265)


def test_another_bigmodels_pods_are_outsiders() -> None:
    policy = _policy()
    assert policy is not None
    head, _ = _pod_labels()
    other_cpu_head, _ = _pod_labels("bigmodel-tiny-cpu.yaml")
    assert not admitted(policy, head, {"namespace": "team-a", "namespace_labels": {}, "labels": other_cpu_head}, 6379)


def test_egress_is_not_restricted_and_opt_out_works() -> None:
    policy = _policy()
    assert policy is not None and policy["spec"]["policyTypes"] == ["Ingress"]
    assert policy["metadata"]["ownerReferences"][0]["controller"] is True
    assert _policy(networkPolicy=False) is None


@pytest.mark.parametrize("example", ["bigmodel-llama-3.1-8b.yaml", "bigmodel-tiny-cpu.yaml"])
def test_ray_token_auth_is_on(example: str) -> None:
    """KubeRay >= 1.5.1 turns Ray's token auth on for GCS, the dashboard and the client port."""
    body = load_example(example)
    spec = BigModelSpec.model_validate(body["spec"])
    rs = build_rayservice(body, spec, placement(spec, None), CONFIG)
    assert rs["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}
