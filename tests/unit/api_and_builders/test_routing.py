"""spec.routing: which Ray Serve request router picks the engine replica, rendered as a light deployment option."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.builders.serve_args import PREFIX_CACHE_ROUTER
from bigmodel_operator.config import OperatorConfig
from bigmodel_serving.args import parse_application

from .conftest import load_example


def _router(**spec: Any) -> dict[str, Any] | None:
    body = load_example("bigmodel-tiny-cpu.yaml")
    body["spec"].update(spec)
    parsed = BigModelSpec.model_validate(body["spec"])
    rs = build_rayservice(body, parsed, placement(parsed, None), OperatorConfig())
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    parse_application(app)
    engine = next(d for d in app["deployments"] if d["name"] == "BigModelEngine")
    ingress = next(d for d in app["deployments"] if d["name"] == "BigModelIngress")
    assert "request_router_config" not in ingress
    router: dict[str, Any] | None = engine.get("request_router_config")
    return router


def test_prefix_cache_when_asked_for() -> None:
    router = _router(
        scaling={"minReplicas": 1, "maxReplicas": 3, "targetOngoingRequests": 8}, routing={"policy": "prefixCache"}
    )
    assert router == {
        "request_router_class": PREFIX_CACHE_ROUTER,
        "request_router_kwargs": {
            "imbalanced_threshold": 8.0,
            "do_eviction": True,
            "eviction_threshold_chars": 400_000,
            "eviction_target_chars": 360_000,
        },
    }


@pytest.mark.parametrize(
    "spec",
    [
        {"scaling": {"replicas": 1}},  # one replica: nothing to choose
        {"scaling": {"minReplicas": 1, "maxReplicas": 3}},  # not by the bounds: a router change rolls replicas
        {"scaling": {"minReplicas": 1, "maxReplicas": 3}, "routing": {"policy": "leastLoaded"}},
        {"scaling": {"maxReplicas": 3}, "engine": {"enablePrefixCaching": False}},
    ],
)
def test_serves_default_router_otherwise(spec: dict[str, Any]) -> None:
    assert _router(**spec) is None


def test_asked_for_with_fixed_replicas() -> None:
    router = _router(scaling={"replicas": 2}, routing={"policy": "prefixCache"})
    assert router is not None and router["request_router_class"] == PREFIX_CACHE_ROUTER


def test_kv_cache_routing_is_not_offered() -> None:
    body = load_example("bigmodel-tiny-cpu.yaml")
    body["spec"]["routing"] = {"policy": "kvCache"}
    with pytest.raises(ValidationError, match="prefixCache"):
        BigModelSpec.model_validate(body["spec"])


def test_the_app_refuses_a_router_class_it_does_not_know() -> None:
    body = load_example("bigmodel-tiny-cpu.yaml")
    body["spec"]["scaling"] = {"maxReplicas": 2}
    body["spec"]["routing"] = {"policy": "prefixCache"}
    parsed = BigModelSpec.model_validate(body["spec"])
    rs = build_rayservice(body, parsed, placement(parsed, None), OperatorConfig())
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    app["deployments"][1]["request_router_config"]["request_router_class"] = "evil.module:Router"
    with pytest.raises(ValueError, match="request_router_class"):
        parse_application(app)


def test_scale_delays_reach_serves_autoscaling_config() -> None:
    body = load_example("bigmodel-tiny-cpu.yaml")
    body["spec"]["scaling"] = {
        "minReplicas": 1,
        "maxReplicas": 2,
        "downscaleDelaySeconds": 30,
        "upscaleDelaySeconds": 5,
    }
    parsed = BigModelSpec.model_validate(body["spec"])
    rs = build_rayservice(body, parsed, placement(parsed, None), OperatorConfig())
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    parse_application(app)
    engine = next(d for d in app["deployments"] if d["name"] == "BigModelEngine")
    assert engine["autoscaling_config"]["downscale_delay_s"] == 30
    assert engine["autoscaling_config"]["upscale_delay_s"] == 5
