"""POST /v1/responses through our ingress, the engine replaced by a stand-in handle (no Ray, no vLLM).

The real path (vLLM's Responses API on an engine replica) is tests/integration/serving/test_serving_conformance.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

MODEL = "tiny"
USAGE = {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}


class _Engine:
    """The engine deployment's handle as the ingress calls it: `.responses.remote(body, raw_request_info)`."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.calls: list[Any] = []

    def options(self, **_: Any) -> _Engine:
        return self

    @property
    def responses(self) -> _Engine:
        return self

    def remote(self, body: Any, raw_request: Any = None) -> AsyncIterator[Any]:
        self.calls.append(body)
        return self._items()

    async def _items(self) -> AsyncIterator[Any]:
        from ray.llm._internal.serve.core.configs.openai_api_models import ErrorInfo, ErrorResponse

        response = {"id": "resp_1", "object": "response", "model": MODEL, "status": "completed", "usage": USAGE}
        if self.answer == "json":
            yield {**response, "output": [{"type": "message", "content": [{"type": "output_text", "text": "hi"}]}]}
        elif self.answer == "stream":
            created = {"type": "response.created", "response": {**response, "status": "in_progress", "usage": None}}
            delta = {"type": "response.output_text.delta", "delta": "hi"}
            done = {"type": "response.completed", "response": response}
            yield [f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in (created, delta)]
            yield [f"event: {done['type']}\ndata: {json.dumps(done)}\n\n"]
        else:
            yield ErrorResponse(error=ErrorInfo(message="Response resp_x not found", type="NotFoundError", code=404))


def _call(answer: str, **fields: Any) -> tuple[tuple[Any, list[bytes], Any], _Engine, Any]:
    from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard
    from starlette.requests import Request
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

    from bigmodel_serving.ingress import USAGE_SCOPE, BigModelIngress, _replica

    engine = _Engine(answer)
    card = ModelCard(id=MODEL, object="model", owned_by="test", permission=[], metadata={})
    ingress = BigModelIngress({MODEL: engine}, {MODEL: card}, app_name="unit")
    ingress.reconfigure({"auth": {"mode": "none"}})
    scope = {"type": "http", "method": "POST", "path": "/v1/responses", "headers": [], "query_string": b""}
    request = Request(scope)
    body = ResponsesRequest(model=MODEL, input="Say hi.", **fields)

    async def run() -> tuple[Any, list[bytes]]:
        response = await ingress.responses(body, request)
        chunks = []
        if hasattr(response, "body_iterator"):
            chunks = [c if isinstance(c, bytes) else c.encode() async for c in response.body_iterator]
        return response, chunks

    try:
        response, chunks = asyncio.run(run())
    finally:
        _replica.pop("ingress", None)
    return (response, chunks, request.scope.get(USAGE_SCOPE)), engine, ingress


def test_a_response_is_answered_as_json_and_metered() -> None:
    (response, _, usage), engine, _ = _call("json")
    assert response.status_code == 200 and response.media_type == "application/json"
    body = json.loads(response.body)
    assert body["object"] == "response" and body["output"][0]["content"][0]["text"] == "hi"
    assert usage == (5, 3)  # input + output tokens count against the key's token quota
    assert engine.calls[0].model == MODEL


def test_a_streamed_response_passes_the_events_through_and_is_metered() -> None:
    (response, chunks, usage), _, _ = _call("stream", stream=True)
    text = b"".join(chunks).decode()
    assert response.media_type == "text/event-stream"
    assert text.startswith("event: response.created\n") and "event: response.completed\n" in text
    assert "[DONE]" not in text  # vLLM's Responses stream ends with response.completed, not [DONE]
    assert usage == (5, 3)


def test_engine_errors_become_openai_errors() -> None:
    from ray.llm._internal.serve.core.configs.openai_api_models import OpenAIHTTPException

    with pytest.raises(OpenAIHTTPException) as raised:
        _call("error", previous_response_id="resp_x")
    assert raised.value.status_code == 404


def test_an_unknown_model_is_404_before_the_engine() -> None:
    from bigmodel_serving.errors import APIError

    with pytest.raises(APIError) as raised:
        _call_unknown()
    assert raised.value.status == 404


def _call_unknown() -> None:
    from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard
    from starlette.requests import Request
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

    from bigmodel_serving.ingress import BigModelIngress, _replica

    card = ModelCard(id=MODEL, object="model", owned_by="test", permission=[], metadata={})
    ingress = BigModelIngress({MODEL: _Engine("json")}, {MODEL: card}, app_name="unit")
    ingress.reconfigure({"auth": {"mode": "none"}})
    request = Request({"type": "http", "method": "POST", "path": "/v1/responses", "headers": [], "query_string": b""})
    try:
        asyncio.run(ingress.responses(ResponsesRequest(model="nope", input="hi"), request))
    finally:
        _replica.pop("ingress", None)
