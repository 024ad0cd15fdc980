"""One Serve port and one route prefix everywhere they appear (issue 11): serveConfigV2, the Ray pods' `serve`
port, the Ingress, the NetworkPolicy and the URLs in status."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.api.bigmodel import IngressSpec
from bigmodel_operator.builders.ingress import build_ingress, ingress_url
from bigmodel_operator.builders.networkpolicy import build_network_policy
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.local import local_application, serve_manifest
from bigmodel_operator.reconcile.bigmodel_reconcile import _in_cluster_url

from .conftest import load_example

LLAMA = "bigmodel-llama-3.1-8b.yaml"


def _body(example: str = LLAMA, path: str | None = None) -> tuple[dict[str, Any], BigModelSpec]:
    body = load_example(example)
    if path is not None:
        body["spec"].setdefault("expose", {}).setdefault("ingress", {})["path"] = path
    return body, BigModelSpec.model_validate(body["spec"])


def _serve_config(rayservice: dict[str, Any]) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(rayservice["spec"]["serveConfigV2"])
    return loaded


def _serve_ports(rayservice: dict[str, Any]) -> dict[str, list[int]]:
    """containerPort of the port named `serve`, per Ray container (head and every worker group)."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster["workerGroupSpecs"]]
    out: dict[str, list[int]] = {}
    for name, group in groups:
        ports = [p for c in group["template"]["spec"]["containers"] for p in c.get("ports", [])]
        out[name] = [p["containerPort"] for p in ports if p["name"] == "serve"]
    return out


@pytest.mark.parametrize("example", [LLAMA, "bigmodel-tiny-cpu.yaml"])
def test_one_serve_port_reaches_every_place(example: str) -> None:
    config = OperatorConfig(serve_port=9000)
    body, spec = _body(example, path="/team-a")
    rayservice = build_rayservice(body, spec, placement(spec, None), config)
    assert _serve_config(rayservice)["http_options"]["port"] == 9000
    # The head's `serve` port makes KubeRay's Serve Service; a worker's is what KubeRay's readiness probe checks.
    assert set(map(tuple, _serve_ports(rayservice).values())) == {(9000,)}
    ingress = build_ingress(body, spec, config)
    assert ingress is not None
    assert {p["backend"]["service"]["port"]["number"] for p in ingress["spec"]["rules"][0]["http"]["paths"]} == {9000}
    policy = build_network_policy(body, spec, config)
    assert policy is not None
    assert policy["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": 9000}]
    assert _in_cluster_url("m", "ns", spec, config) == "http://m-serve-svc.ns.svc.cluster.local:9000/team-a/v1"


def test_default_serve_port_is_kubrays_default() -> None:
    body, spec = _body()
    rayservice = build_rayservice(body, spec, placement(spec, None), OperatorConfig())
    assert _serve_config(rayservice)["http_options"]["port"] == 8000
    assert set(map(tuple, _serve_ports(rayservice).values())) == {(8000,)}


@pytest.mark.parametrize(
    ("port", "message"),
    [(80, "greater than or equal to 1024"), (6379, "Ray's GCS port"), (8265, "dashboard"), (70000, "less than")],
)
def test_serve_port_that_cannot_work_is_refused(port: int, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        OperatorConfig(serve_port=port)


@pytest.mark.parametrize(
    ("path", "prefix"), [(None, "/"), ("/", "/"), ("/team-a", "/team-a"), ("/a/b.c~d", "/a/b.c~d")]
)
def test_ingress_path_is_the_serve_route_prefix(path: str | None, prefix: str) -> None:
    body, spec = _body(path=path)
    config = OperatorConfig()
    rayservice = build_rayservice(body, spec, placement(spec, None), config)
    assert [app["route_prefix"] for app in _serve_config(rayservice)["applications"]] == [prefix]
    ingress = build_ingress(body, spec, config)
    assert ingress is not None
    base = prefix.rstrip("/")
    assert [p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]] == [f"{base}/v1", f"{base}/health"]
    assert not any("rewrite" in key for key in ingress["metadata"]["annotations"]), "portable: no rewrite annotation"
    assert ingress_url(spec) == f"https://llm.example.com{base}/v1"
    assert _in_cluster_url("m", "ns", spec, config) == f"http://m-serve-svc.ns.svc.cluster.local:8000{base}/v1"


def test_local_serve_mounts_the_app_at_the_same_prefix() -> None:
    body, _spec = _body("bigmodel-tiny-cpu.yaml", path="/team-a")
    assert local_application(body)["route_prefix"] == "/team-a"


@pytest.mark.parametrize(
    "path", ["/team-a/", "//a", "/a//b", "a", "/a b", "/{app}", "/a%2Fb", "/a/../b", "/..", "/a/."]
)
def test_bad_ingress_paths_are_refused_with_the_field(path: str) -> None:
    with pytest.raises(ValidationError) as error:
        IngressSpec.model_validate({"path": path})
    assert error.value.errors()[0]["loc"] == ("path",)


def test_dot_segments_get_a_clear_message() -> None:
    with pytest.raises(ValidationError, match=re.escape("must not contain '.' or '..' segments")):
        IngressSpec.model_validate({"path": "/team-a/../admin"})
    assert IngressSpec.model_validate({"path": "/.well-known"}).path == "/.well-known"  # a dot inside a segment is fine


def test_bigmodel_serve_listens_on_the_configured_serve_port(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bigmodel_serving.local

    body = load_example("bigmodel-tiny-cpu.yaml")
    body["spec"]["model"]["uri"] = "hf://org/tiny"  # nothing to find on disk
    body["spec"]["auth"] = {"mode": "none"}
    manifest = tmp_path / "bm.yaml"
    manifest.write_text(yaml.safe_dump(body))
    config = tmp_path / "config.yaml"
    config.write_text("serve_port: 9000\n")
    monkeypatch.setenv("BIGMODEL_OPERATOR_CONFIG", str(config))
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(bigmodel_serving.local, "run_local", lambda app, **kw: calls.append(kw))
    assert serve_manifest(manifest, host="127.0.0.1") == 0
    assert serve_manifest(manifest, host="127.0.0.1", port=8123) == 0  # --port still wins
    assert [c["port"] for c in calls] == [9000, 8123]


def test_prefixed_application_parses_as_the_workloads_contract() -> None:
    from bigmodel_serving.args import parse_application

    body, spec = _body("bigmodel-tiny-cpu.yaml", path="/team-a")
    rayservice = build_rayservice(body, spec, placement(spec, None), OperatorConfig(serve_port=9000))
    (app,) = _serve_config(rayservice)["applications"]
    assert parse_application(app).route_prefix == "/team-a"
