"""POST /v1/responses without Ray or an engine: the ingress's route behind its guard (keys, quotas, usage,
errors, adapters, canary names) with a stand-in engine handle, and the engine side's carrying of vLLM's
answers with a stand-in vLLM handler.

The real path (vLLM's Responses API on an engine replica) is tests/integration/serving/test_serving_conformance.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import Request
from fastapi.responses import Response
from starlette.testclient import TestClient
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

MODEL = "tiny"
KEY = "sk-unit-alice"
USAGE = {"input_tokens": 5, "output_tokens": 3, "total_tokens": 8}


def _response(model: str, **fields: Any) -> dict[str, Any]:
    message = {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "hi"}]}
    return {"id": "resp_1", "object": "response", "model": model, "status": "completed", "output": [message], **fields}


def _event(payload: dict[str, Any]) -> str:
    return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n"


class ResponsesEngine:
    """The engine deployment's handle as the ingress calls it: `.options(...).responses.remote(body, None)`."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, Any], Any]] = []
        self.error: dict[str, Any] | None = None

    def options(self, **options: Any) -> _Configured:
        return _Configured(self, options)

    async def _answer(self, body: Any) -> AsyncIterator[Any]:
        from ray.serve.llm.openai_api_models import ErrorResponse

        if self.error is not None:
            yield ErrorResponse.model_validate({"error": self.error})
            return
        if not body.stream:
            yield _response(body.model, usage=USAGE)
            return
        created = {"type": "response.created", "response": _response(body.model, status="in_progress", usage=None)}
        delta = {"type": "response.output_text.delta", "delta": "hi"}
        done = {"type": "response.completed", "response": _response(body.model, usage=USAGE)}
        yield [_event(created), _event(delta)]
        yield [_event(done)]


class _Configured:
    """A handle with options: records the call on its engine."""

    def __init__(self, engine: ResponsesEngine, options: dict[str, Any]) -> None:
        self.engine, self.options = engine, options

    @property
    def responses(self) -> _Configured:
        return self

    def remote(self, body: Any, raw_request_info: Any) -> AsyncIterator[Any]:
        from ray import cloudpickle

        from bigmodel_serving.responses_api import request_from

        cloudpickle.dumps(body)  # what Ray does with the arguments of a handle call
        self.engine.calls.append((self.options, body))
        return self.engine._answer(request_from(body))


@pytest.fixture
def ingress(make_ingress: Callable[..., Any], tmp_path: Path) -> Any:
    made = make_ingress(ResponsesEngine(), model=MODEL, key=KEY, app_name="unit-responses")
    made.reconfigure(
        {
            "auth": {"mode": "api_keys", "keys_dir": str(tmp_path)},
            "adapters": [{"name": "bot", "uri": tmp_path.as_uri()}],
            "request_log": {"enabled": True, "path": str(tmp_path / "requests.jsonl")},
        }
    )
    made.log_path = tmp_path / "requests.jsonl"
    return made


def _client(ingress: Any, key: str = KEY) -> TestClient:
    from bigmodel_serving.ingress import create_app

    app = create_app()

    async def responses(body: ResponsesRequest, request: Request) -> Response:
        return await ingress.responses(body, request)  # type: ignore[no-any-return]

    app.add_api_route("/v1/responses", responses, methods=["POST"])
    return TestClient(app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {key}"})


def _usage(ingress: Any) -> dict[str, Any]:
    return dict(ingress._actor()._usage["alice"].as_dict())


def test_a_response_is_json_and_charged_to_the_key(ingress: Any) -> None:
    answer = _client(ingress).post("/v1/responses", json={"model": MODEL, "input": "Say hi."})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert body["object"] == "response" and body["output"][0]["content"][0]["text"] == "hi"
    usage = _usage(ingress)
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["responses"]) == (5, 3, {200: 1})
    options, sent = ingress.engine_stub.calls[0]
    assert options == {"stream": True} and sent == {"model": MODEL, "input": "Say hi."}


def test_a_streamed_response_passes_vllms_events_through_and_is_charged(ingress: Any) -> None:
    answer = _client(ingress).post("/v1/responses", json={"model": MODEL, "input": "Count.", "stream": True})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    text = answer.text
    assert text.startswith("event: response.created\ndata: ") and "event: response.completed\n" in text
    assert "[DONE]" not in text  # vLLM's Responses stream ends with response.completed
    assert _usage(ingress)["completion_tokens"] == 3


def test_engine_errors_keep_their_status_in_an_openai_body(ingress: Any) -> None:
    client = _client(ingress)
    ingress.engine_stub.error = {
        "message": "Response with id 'resp_x' not found.",
        "type": "NotFoundError",
        "code": 404,
    }
    missing = client.post("/v1/responses", json={"model": MODEL, "input": "Hi", "previous_response_id": "resp_x"})
    assert missing.status_code == 404
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    ingress.engine_stub.error = {"message": "full", "type": "ServiceUnavailable", "code": 503}
    busy = client.post("/v1/responses", json={"model": MODEL, "input": "Hi"})
    assert busy.status_code == 503 and busy.headers["Retry-After"]


def test_input_items_pydantic_turns_into_iterators_reach_the_engine(ingress: Any) -> None:
    """Schemathesis found these: validated, a file_search_call's results (and a computer_call_output's
    acknowledged_safety_checks) are iterators that Ray cannot pickle; the engine gets the JSON."""
    items = [
        {"type": "file_search_call", "id": "fs_1", "queries": [], "status": "completed", "results": [{}]},
        {
            "type": "computer_call_output",
            "call_id": "c_1",
            "output": {"type": "computer_screenshot"},
            "acknowledged_safety_checks": [{"id": "sc_1"}],
        },
    ]
    answer = _client(ingress).post("/v1/responses", json={"model": MODEL, "input": items})
    assert answer.status_code == 200, answer.text
    assert ingress.engine_stub.calls[0][1]["input"] == items
    for _ in range(50):  # the request log writes off the request path
        if ingress.log_path.exists() and ingress.log_path.read_text():
            break
        asyncio.run(asyncio.sleep(0.02))
    logged = json.loads(ingress.log_path.read_text().splitlines()[0])["input"]
    assert [item["type"] for item in logged] == ["file_search_call", "computer_call_output"]
    assert logged[0]["results"] == [{}] and logged[1]["acknowledged_safety_checks"][0]["id"] == "sc_1"


def test_input_items_vllm_cannot_read_are_a_400_naming_the_item() -> None:
    """Schemathesis found these: vLLM's Responses implementation passes items it does not convert to its chat
    renderer, which fails with an AttributeError (a 500)."""
    from bigmodel_serving.responses_api import request_from, unsupported_input

    def refused(items: list[Any]) -> tuple[str, str] | None:
        return unsupported_input(request_from({"model": MODEL, "input": items}))

    reasoning = {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}]}
    call = {"type": "function_call", "call_id": "c_1", "name": "f", "arguments": "{}"}
    readable = [
        {"role": "user", "content": "Hi"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        reasoning,
        call,
        {"type": "function_call_output", "call_id": "c_1", "output": "42"},
    ]
    assert refused(readable) is None
    assert unsupported_input(request_from({"model": MODEL, "input": "Hi"})) is None
    unreadable = [
        {"type": "configuration_update"},
        {"type": "computer_call_output", "call_id": "c", "output": {"type": "computer_screenshot"}},
        {"type": "file_search_call", "id": "fs", "queries": [], "status": "completed"},
    ]
    for item in unreadable:
        answer = refused([{"role": "user", "content": "Hi"}, item])
        assert answer is not None and answer[0] == "input[1].type" and repr(item["type"]) in answer[1], answer
    refusal = {
        "type": "message",
        "id": "m_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "refusal", "refusal": "no"}],
    }
    assert refused([refusal]) == (
        "input[0].content",
        "An assistant output message needs an output_text as its first content part.",
    )


def test_keys_models_and_bodies_are_checked_before_the_engine(ingress: Any) -> None:
    assert (
        _client(ingress, key="sk-wrong").post("/v1/responses", json={"model": MODEL, "input": "Hi"}).status_code == 401
    )
    client = _client(ingress)
    unknown = client.post("/v1/responses", json={"model": "other", "input": "Hi"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    invalid = client.post("/v1/responses", json={"model": MODEL})  # no input
    assert invalid.status_code == 400 and invalid.json()["error"]["param"] == "input"
    assert ingress.engine_stub.calls == []


def test_an_adapter_is_multiplexed_and_the_request_is_logged(ingress: Any) -> None:
    answer = _client(ingress).post(
        "/v1/responses", json={"model": f"{MODEL}:bot", "input": [{"role": "user", "content": "Hi"}]}
    )
    assert answer.status_code == 200 and answer.json()["model"] == f"{MODEL}:bot"
    assert ingress.engine_stub.calls[0][0] == {"stream": True, "multiplexed_model_id": f"{MODEL}:bot"}
    for _ in range(50):  # the request log writes off the request path
        if ingress.log_path.exists() and ingress.log_path.read_text():
            break
        asyncio.run(asyncio.sleep(0.02))
    record = json.loads(ingress.log_path.read_text().splitlines()[0])
    assert record["input"] == [{"role": "user", "content": "Hi"}] and record["completions"] == ["hi"]
    assert record["usage"]["output_tokens"] == 3


def test_a_canary_route_answers_under_the_called_name() -> None:
    from bigmodel_serving.openai_stream import Completion, parse_packet

    done = {"type": "response.completed", "response": _response("tiny:bot.v2", usage=USAGE)}
    [event] = parse_packet(_event(done))
    completion = event.completion()
    assert completion is not None and completion.model == "tiny:bot.v2"
    renamed = event.replaced(completion.with_model("tiny:bot"))
    assert renamed.encode().startswith("event: response.completed\ndata: ")
    assert json.loads(renamed.data or "")["response"]["model"] == "tiny:bot"
    usage = event.usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (5, 3)
    whole = Completion(_response("tiny:bot.v2", usage=USAGE))
    assert whole.texts() == ["hi"] and whole.with_model("tiny:bot").model == "tiny:bot"


# ---- the engine side: vLLM's answer carried as it is ----


class _VLLMResponses:
    """vLLM's OpenAIServingResponses as the engine calls it: `await create_responses(request)`."""

    def __init__(self, result: Any) -> None:
        self.result = result

    async def create_responses(self, request: Any) -> Any:
        if isinstance(self.result, BaseException):
            raise self.result
        return self.result


def engine_answer_of(handler: Any, data: Any) -> AsyncIterator[Any]:
    from bigmodel_serving.responses_api import engine_answer

    return engine_answer(handler, data)


async def _collect(items: AsyncIterator[Any]) -> list[Any]:
    return [item async for item in items]


def _engine_items(handler: Any) -> list[Any]:
    return asyncio.run(_collect(engine_answer_of(handler, {"model": MODEL, "input": "hi"})))


def test_the_engine_carries_vllms_answers_and_errors() -> None:
    from ray.serve.llm.openai_api_models import ErrorResponse
    from vllm.entrypoints.openai.responses.protocol import ResponseCompletedEvent, ResponsesResponse
    from vllm.entrypoints.serve.engine.protocol import ErrorInfo as VLLMErrorInfo
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse as VLLMErrorResponse

    message = {
        "type": "message",
        "id": "msg_1",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": "hi", "annotations": []}],
    }
    details = {"input_tokens_details": {"cached_tokens": 0}, "output_tokens_details": {"reasoning_tokens": 0}}
    whole = ResponsesResponse.model_validate(
        {
            **_response(MODEL, usage={**USAGE, **details}),
            "output": [message],
            "created_at": 0,
            "parallel_tool_calls": True,
            "temperature": 1.0,
            "tool_choice": "auto",
            "tools": [],
            "top_p": 1.0,
            "background": False,
            "max_output_tokens": 16,
            "service_tier": "auto",
            "truncation": "disabled",
        }
    )
    [answer] = _engine_items(_VLLMResponses(whole))
    assert isinstance(answer, dict) and answer["object"] == "response" and answer["usage"]["output_tokens"] == 3

    async def events() -> AsyncIterator[Any]:
        yield ResponseCompletedEvent(type="response.completed", response=whole, sequence_number=1)

    [event] = _engine_items(_VLLMResponses(events()))
    assert event.startswith("event: response.completed\ndata: {") and event.endswith("\n\n")

    not_found = VLLMErrorResponse(error=VLLMErrorInfo(message="no such response", type="NotFoundError", code=404))
    background = VLLMErrorResponse(
        error=VLLMErrorInfo(message="no store", type="invalid_request_error", param="background", code=400)
    )
    [refused] = _engine_items(_VLLMResponses(background))
    assert (refused.error.code, refused.error.param) == (400, "background")
    invalid = asyncio.run(_collect(engine_answer_of(_VLLMResponses(whole), {"model": MODEL, "input": 5})))
    assert invalid[0].error.code == 400 and invalid[0].error.param == "input.str"
    for handler, status in (
        (_VLLMResponses(not_found), 404),
        (_VLLMResponses(ValueError("bad input")), 400),
        (None, 404),  # an engine without text generation
    ):
        [error] = _engine_items(handler)
        assert isinstance(error, ErrorResponse) and error.error.code == status
