"""The chart on its own: lint, schema, what it renders, and that it agrees with the operator's code.

These need helm but no cluster.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from bigmodel_operator import crdgen
from bigmodel_operator.config import OperatorConfig

from .conftest import CHART, chartidentity, find

pytestmark = pytest.mark.usefixtures("helm_bin")
SCHEMA = CHART / "values.schema.json"


@pytest.mark.parametrize(
    "values",
    [[], ["--set=watchNamespaces={team-a,team-b}", "--set=logLevel=debug", "--set=networkPolicy.enabled=true"]],
    ids=["defaults", "namespaced"],
)
def test_helm_lint_strict(values: list[str]) -> None:
    out = chartidentity.helm("lint", "--strict", str(CHART), *values).stdout
    assert "0 chart(s) failed" in out, out


@pytest.mark.parametrize(
    ("flag", "message"),
    [
        ("replicas=2", "/replicas"),
        ("image.tag=5", "/image/tag"),
        ("logLevel=loud", "/logLevel"),
        ("surprise=1", "'surprise' not allowed"),
        ("operatorConfig.surprise=1", "'surprise' not allowed"),
        ("operatorConfig.gpus_per_node=0", "/operatorConfig/gpus_per_node"),
        ("operatorConfig.fetch_hub_config=maybe", "/operatorConfig/fetch_hub_config"),
        ("watchNamespaces={Team_A}", "/watchNamespaces/0"),
        ("crds.install=yes", "/crds/install"),
        ("kuberay.enabled=true", "helm dependency build"),
    ],
)
def test_bad_values_fail_at_render(flag: str, message: str) -> None:
    proc = chartidentity.helm("template", "t", str(CHART), f"--set={flag}", check=False)
    assert proc.returncode != 0, f"--set {flag} was accepted"
    assert message in proc.stderr, proc.stderr


def operator_config_schema() -> dict[str, Any]:
    """OperatorConfig's JSON schema as values.schema.json carries it: $refs inlined, no titles."""
    schema = OperatorConfig.model_json_schema()
    defs = schema.pop("$defs", {})

    def fix(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                node = defs[node["$ref"].split("/")[-1]]
            return {k: fix(v) for k, v in node.items() if k != "title"}
        if isinstance(node, list):
            return [fix(item) for item in node]
        return node

    return {**fix(schema), "description": "The operator's config file (bigmodel_operator.config.OperatorConfig)."}


def test_operator_config_schema_matches_the_operator() -> None:
    """values.schema.json validates operatorConfig exactly as the operator's pydantic model does."""
    schema = json.loads(SCHEMA.read_text())
    expected = operator_config_schema()
    if os.environ.get("BIGMODEL_UPDATE_GOLDEN") == "1":
        schema["properties"]["operatorConfig"] = expected
        SCHEMA.write_text(json.dumps(schema, indent=2) + "\n")
    assert schema["properties"]["operatorConfig"] == expected, (
        "values.schema.json's operatorConfig differs from OperatorConfig (BIGMODEL_UPDATE_GOLDEN=1 rewrites it)"
    )


def test_rendered_config_is_what_the_operator_loads(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render("--set=operatorConfig.gpu_products.NVIDIA-L40S.memoryGiB=48")
    cm = find(docs, "ConfigMap", "t-bigmodel-operator-config")
    config = OperatorConfig.model_validate(yaml.safe_load(cm["data"]["config.yaml"]))
    assert config.gpu_products == {"NVIDIA-L40S": {"memoryGiB": 48}}
    assert config.metrics_address == "0.0.0.0:8081", "metrics.enabled sets the operator's metrics address"
    off = find(render("--set=metrics.enabled=false"), "ConfigMap")["data"]["config.yaml"]
    assert OperatorConfig.model_validate(yaml.safe_load(off)).metrics_address is None
    defaults = OperatorConfig()
    values = yaml.safe_load((CHART / "values.yaml").read_text())["operatorConfig"]
    for key, value in values.items():
        default = getattr(defaults, key)
        assert (default.model_dump(exclude_none=True) if hasattr(default, "model_dump") else default) == value, (
            f"values.yaml operatorConfig.{key} differs from the operator's default"
        )


def test_deployment_defaults(render: Callable[..., list[dict[str, Any]]]) -> None:
    docs = render()
    deploy = find(docs, "Deployment")
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/bigmodel-operator/operator:0.1.0"
    assert container["args"] == [
        "operator",
        "--config=/etc/bigmodel/config.yaml",
        "--liveness=http://0.0.0.0:8080/healthz",
        "--all-namespaces",
    ]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["resources"]["limits"]["memory"]
    assert pod["serviceAccountName"] == "t-bigmodel-operator"
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == [
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "CustomResourceDefinition",
        "CustomResourceDefinition",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]
    assert container["ports"][1] == {"name": "metrics", "containerPort": 8081, "protocol": "TCP"}


def test_namespace_list_debug_and_digest(render: Callable[..., list[dict[str, Any]]]) -> None:
    digest = "sha256:" + "ab" * 32
    docs = render("--set=watchNamespaces={team-a,team-b}", "--set=logLevel=debug", f"--set=image.digest={digest}")
    container = find(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][-3:] == ["--namespace=team-a", "--namespace=team-b", "--verbose"]
    assert container["image"] == f"ghcr.io/bigmodel-operator/operator@{digest}"
    roles = [d for d in docs if d["kind"] == "Role"]
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    cluster_role = find(docs, "ClusterRole")
    assert cluster_role["rules"] == [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["list", "watch"]},
        {"apiGroups": ["apiextensions.k8s.io"], "resources": ["customresourcedefinitions"], "verbs": ["list", "watch"]},
        {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]},
    ], "only cluster-scoped reads stay cluster-wide in namespace-list mode"
    subject = {"kind": "ServiceAccount", "name": "t-bigmodel-operator", "namespace": "bigmodel-system"}
    bindings = [d for d in docs if d["kind"] in {"RoleBinding", "ClusterRoleBinding"}]
    assert len(bindings) == 3 and all(b["subjects"] == [subject] for b in bindings)


def test_token_secret_permission_can_be_turned_off(render: Callable[..., list[dict[str, Any]]]) -> None:
    # Reading Secrets (`get`, to check a token Secret exists) is optional; `create` stays, for the API-key
    # Secret the operator generates once per BigModel (it never reads or overwrites an existing one).
    for values, expected in (([], True), (["--set=rbac.tokenSecrets=false"], False)):
        rules = find(render(*values), "ClusterRole")["rules"]
        secret_verbs = {verb for rule in rules if "secrets" in rule["resources"] for verb in rule["verbs"]}
        assert ("get" in secret_verbs) is expected
        assert secret_verbs <= {"get", "create"}
        assert "create" in secret_verbs


def test_crds_are_the_generated_files_plus_keep(render: Callable[..., list[dict[str, Any]]]) -> None:
    files = CHART / "files" / "crds"
    assert crdgen.check(files) == [], "the chart's CRDs are stale: run `make crds`"
    rendered = {d["metadata"]["name"]: d for d in render() if d["kind"] == "CustomResourceDefinition"}
    for path in sorted(files.glob("*.yaml")):
        generated = yaml.safe_load(path.read_text())
        generated["metadata"]["annotations"] = {"helm.sh/resource-policy": "keep"}
        assert rendered.pop(generated["metadata"]["name"]) == generated
    assert rendered == {}
    assert not [d for d in render("--set=crds.install=false") if d["kind"] == "CustomResourceDefinition"]
    no_keep = [d for d in render("--set=crds.keep=false") if d["kind"] == "CustomResourceDefinition"]
    assert all("annotations" not in d["metadata"] for d in no_keep)
    shown = chartidentity.helm("show", "crds", str(CHART)).stdout
    assert not shown.strip(), "Helm installs crds/ once and never upgrades it: the CRDs belong in files/crds/"


def test_optional_objects(render: Callable[..., list[dict[str, Any]]]) -> None:
    monitors = ("--set=metrics.serviceMonitor.enabled=true", "--set=metrics.modelServers.enabled=true")
    kinds = {d["kind"] for d in render(*monitors)}
    assert not kinds & {"ServiceMonitor", "PodMonitor"}, "rendered without the Prometheus Operator's CRDs"
    apis = (
        "--api-versions=monitoring.coreos.com/v1/ServiceMonitor",
        "--api-versions=monitoring.coreos.com/v1/PodMonitor",
    )
    docs = render(*monitors, *apis)
    service = find(docs, "Service")
    service_monitor = find(docs, "ServiceMonitor")
    assert service_monitor["spec"]["endpoints"][0]["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    pod_monitor = find(docs, "PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"any": True}
    # Ray's metrics port, and the serving app's /metrics on the head's bm-metrics port (not the serving port).
    assert [e["port"] for e in pod_monitor["spec"]["podMetricsEndpoints"]] == ["metrics", "bm-metrics"]
    assert not [d for d in render("--set=metrics.enabled=false", *monitors, *apis) if d["kind"] == "Service"]

    policy = find(render("--set=networkPolicy.enabled=true"), "NetworkPolicy")
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    assert policy["spec"]["ingress"] == [{"ports": [{"port": 8081, "protocol": "TCP"}]}], "metrics port only"
    closed = find(render("--set=networkPolicy.enabled=true", "--set=metrics.enabled=false"), "NetworkPolicy")
    assert closed["spec"]["ingress"] == []


def _value_paths(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node and prefix not in {"operatorConfig.gpu_products", "resources"}:
        paths = []
        for key, value in node.items():
            paths += _value_paths(value, f"{prefix}.{key}" if prefix else key)
        return paths
    return [prefix]


def test_readme_lists_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    documented = set(re.findall(r"^\| `([^`]+)` \|", (CHART / "README.md").read_text(), re.MULTILINE))
    missing = [path for path in _value_paths(values) if path not in documented]
    assert not missing, f"charts/bigmodel-operator/README.md does not list: {missing}"
