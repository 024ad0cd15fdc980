"""Property-based requests from the app's own OpenAPI document: no 5xx, every error OpenAI-shaped."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings

from bigmodel_serving.api import create_api, make_runtime, openapi_document
from bigmodel_serving.args import parse_serve_args
from bigmodel_serving.engines.base import ModelInfo
from bigmodel_serving.engines.stub import StubEngineFactory


def _document() -> dict[str, Any]:
    """Built in-process from the same routes the replicas serve (the app exposes no /openapi.json)."""
    args = parse_serve_args({"model": {"uri": "file:///m", "served_name": "tiny"}, "engine": "transformers"})
    runtime = make_runtime(args, StubEngineFactory()(args), ModelInfo(max_model_len=128, adapters=("lora",)))
    return openapi_document(create_api(runtime), model_names=["tiny", "tiny:lora"])


schema = schemathesis.openapi.from_dict(_document())


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any, serving: Any) -> None:
    response = case.call(base_url=serving.url, headers={"Authorization": f"Bearer {serving.api_key}"}, timeout=60)
    assert response.status_code < 500, (
        f"{case.method} {case.path} {case.body!r} -> {response.status_code} {response.text}"
    )
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
