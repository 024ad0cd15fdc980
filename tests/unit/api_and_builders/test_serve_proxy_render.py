"""operatorConfig.serve_proxy: Ray Serve's HAProxy mode (default: two environment variables on every Ray container,
nothing else changed) or Ray's Python proxy (nothing rendered: the RayCluster as before the setting existed)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.config import OperatorConfig

BODY = {"metadata": {"name": "tiny", "namespace": "ns", "uid": "u1"}, "kind": "BigModel"}
HAPROXY_ENV = {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1"}


def _containers(config: OperatorConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = BigModelSpec.model_validate({"model": {"uri": "s3://models/tiny"}, "resources": {"gpu": {"count": 0}}})
    cluster = build_rayservice(BODY, spec, placement(spec, None), config)["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    worker = cluster["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    return head, worker


def _env(container: dict[str, Any]) -> dict[str, str | None]:
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def test_rays_proxy_renders_nothing() -> None:
    config = OperatorConfig(serve_proxy="ray")
    head, worker = _containers(config)
    assert "env" not in head  # the head's template is exactly what it was before the setting existed
    assert not HAPROXY_ENV.keys() & _env(worker).keys()


def test_haproxy_mode_is_the_default_and_sets_both_switches_on_head_and_workers() -> None:
    config = OperatorConfig()
    assert config.serve_proxy == "haproxy"
    head, worker = _containers(config)
    for container in (head, worker):
        env = _env(container)
        assert {k: env.get(k) for k in HAPROXY_ENV} == HAPROXY_ENV
        # haproxy takes over serve_port: KubeRay's probes and Service find it under the same name
        assert {"name": "serve", "containerPort": config.serve_port} in container["ports"]
    assert _env(worker)["HF_HOME"]  # added to, not replacing, the worker's environment


def test_unknown_proxy_is_refused() -> None:
    with pytest.raises(ValidationError, match="serve_proxy"):
        OperatorConfig.model_validate({"serve_proxy": "nginx"})
