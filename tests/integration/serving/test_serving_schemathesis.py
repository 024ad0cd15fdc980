"""Property-based requests against the running ingress: no 5xx, every error OpenAI-shaped.

The OpenAPI document comes from the ingress's own FastAPI routes (the app serves no /openapi.json):
the allowlisted Ray Serve LLM routes with vLLM's request models, plus /health and /health/ready.
"""

from __future__ import annotations

from typing import Any

import schemathesis
from fastapi.openapi.utils import get_openapi
from hypothesis import HealthCheck, settings
from schemathesis.config import SchemathesisConfig

from bigmodel_serving.ingress import APP

from .conftest import MODEL, ServingStack


def _document() -> dict[str, Any]:
    document = get_openapi(title="bigmodel", version="1", routes=APP.routes)
    # Keep generated generations short: the point is the request handling, not the model.
    for schema in document.get("components", {}).get("schemas", {}).values():
        properties = schema.get("properties", {})
        if "model" in properties:
            properties["model"] = {"type": "string", "enum": [MODEL, f"{MODEL}:lora", "missing"]}
        for name in ("max_tokens", "max_completion_tokens"):
            if name in properties:
                properties[name] = {"anyOf": [{"type": "integer", "maximum": 8}, {"type": "null"}]}
        if "n" in properties:
            properties["n"] = {"anyOf": [{"type": "integer", "maximum": 2}, {"type": "null"}]}
    return document


# Fuzzing only, valid and invalid bodies (max_examples each operation). Schemathesis' coverage phase is off: it
# sends every boundary value of every field, unbounded by max_examples, which for vLLM's request models came to
# ~14,000 requests to /v1/responses and ~1,500 to /v1/completions (739 of them generating up to max_model_len
# tokens): 20+ minutes of a 2-core CI run for cases the negative fuzzing and test_serving_hostile_bodies.py cover.
CONFIG = SchemathesisConfig.from_dict({"phases": {"coverage": {"enabled": False}}, "generation": {"mode": "all"}})
schema = schemathesis.openapi.from_dict(_document(), config=CONFIG)


@schema.parametrize()
# derandomize: CI sees the same cases on every run (a find goes into test_serving_hostile_bodies.py).
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any, serving: ServingStack) -> None:
    response = case.call(base_url=serving.url, headers={"Authorization": f"Bearer {serving.api_key}"}, timeout=120)
    assert response.status_code < 500, (
        f"{case.method} {case.path} {case.body!r} -> {response.status_code} {response.text}"
    )
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
