"""operatorConfig.head_cpu / head_cpu_limit: the Ray head's CPU request, and a limit that may be above it so that a
small head borrows idle cores while Serve imports the application and starts its proxies."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.api.base import cpu_cores
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.config import OperatorConfig

BODY = {"metadata": {"name": "tiny", "namespace": "ns", "uid": "u1"}, "kind": "BigModel"}


def _head_resources(config: OperatorConfig) -> dict[str, Any]:
    spec = BigModelSpec.model_validate({"model": {"uri": "s3://models/tiny"}, "resources": {"gpu": {"count": 0}}})
    cluster = build_rayservice(BODY, spec, placement(spec, None), config)["spec"]["rayClusterConfig"]
    resources: dict[str, Any] = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["resources"]
    return resources


def test_without_a_limit_the_head_is_limited_to_its_request() -> None:
    resources = _head_resources(OperatorConfig(head_cpu="1500m"))
    assert resources["requests"] == resources["limits"]
    assert resources["limits"]["cpu"] == "1500m"


def test_a_limit_above_the_request_changes_only_the_cpu_limit() -> None:
    resources = _head_resources(OperatorConfig(head_cpu="250m", head_cpu_limit="2", head_memory="4Gi"))
    assert resources["requests"] == {"cpu": "250m", "memory": "4Gi", "ephemeral-storage": "8Gi"}
    assert resources["limits"] == {"cpu": "2", "memory": "4Gi", "ephemeral-storage": "8Gi"}


@pytest.mark.parametrize(("request_", "limit"), [("2", "1500m"), ("500m", "0.25")])
def test_a_limit_below_the_request_is_refused_with_both_values(request_: str, limit: str) -> None:
    with pytest.raises(ValidationError, match=f"head_cpu_limit {limit} is below head_cpu {request_}"):
        OperatorConfig(head_cpu=request_, head_cpu_limit=limit)


def test_a_limit_that_is_not_a_quantity_is_refused() -> None:
    with pytest.raises(ValidationError, match="head_cpu_limit"):
        OperatorConfig.model_validate({"head_cpu_limit": "two"})


@pytest.mark.parametrize(("text", "cores"), [("2", 2.0), ("250m", 0.25), ("0.5", 0.5), ("1k", 1000.0)])
def test_cpu_quantities_in_cores(text: str, cores: float) -> None:
    assert cpu_cores(text) == pytest.approx(cores)
