"""POST /v1/responses: vLLM's own Responses API (what `vllm serve` mounts), through our ingress.

Ray Serve LLM 2.60 routes chat, completions, embeddings and more, but not Responses; its vLLM engine
builds vLLM's whole serving state, Responses included (`OpenAIServingResponses`). So nothing here speaks
the Responses protocol; we only carry it across the two deployments:

- on an engine replica, `engine_answer(handler, request)` runs vLLM's `create_responses` and yields one
  dict (the response as vLLM's server writes it), Ray's public `ErrorResponse`, or server-sent event
  strings (`event: <type>` + `data: {...}`) exactly as vLLM's server writes them;
- on the ingress, `ingress_answer(handle, body)` calls the engine deployment's handle and answers as Ray's
  router does for chat: one JSON body or a text/event-stream; an `ErrorResponse` becomes an OpenAI-style
  error with its status.

The ingress sends the request's JSON, not the validated `ResponsesRequest`: pydantic validates some of its
input items' lists (`Iterable[...]` in openai's params) into iterators that Ray cannot serialise, so the
engine replica validates the JSON again (`request_from`) and answers a 400 for what it refuses.

Keys, quotas, usage (input/output tokens), canary routes and the request log are the ingress's, as for
chat. vLLM keeps no responses unless `VLLM_ENABLE_RESPONSES_API_STORE=1` (which vLLM warns never frees
them), so `previous_response_id` is a 404 and `background` a 400 on every replica alike.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from bigmodel_serving.errors import APIError, type_for_status

ROUTER_TIMEOUT_ENV = "RAY_SERVE_LLM_ROUTER_HTTP_TIMEOUT"  # the same bound Ray's router uses for chat
DEFAULT_ROUTER_TIMEOUT_S = 600.0


def router_timeout_s() -> float:
    try:
        return float(os.environ.get(ROUTER_TIMEOUT_ENV, DEFAULT_ROUTER_TIMEOUT_S))
    except ValueError:
        return DEFAULT_ROUTER_TIMEOUT_S


# ---- engine replica ----


def _error(status: int, message: str, param: str | None = None) -> Any:
    from ray.serve.llm.openai_api_models import ErrorResponse

    error = {"message": message, "type": type_for_status(status), "param": param, "code": status}
    return ErrorResponse.model_validate({"error": error})


def sse_event(event: Any) -> str:
    """One streamed Responses event as vLLM's server writes it."""
    kind = getattr(event, "type", "unknown")
    return f"event: {kind}\ndata: {event.model_dump_json(indent=None, by_alias=True)}\n\n"


def request_from(data: Any) -> Any:
    """vLLM's `ResponsesRequest` from the JSON the ingress sends (a request already validated passes as is);
    raises pydantic's ValidationError."""
    from vllm.entrypoints.openai.responses.protocol import ResponsesRequest

    if isinstance(data, ResponsesRequest):
        return data
    return ResponsesRequest.model_validate(copy.deepcopy(data))  # vLLM's validator edits what it is given


# What the pinned vLLM's Responses implementation turns into chat messages
# (vllm/entrypoints/openai/responses/utils.py, `_construct_message_from_response_item`): every other input item
# (computer, shell, web search, custom tool calls and their outputs, ...) reaches vLLM's chat renderer as it is
# and fails there with an AttributeError, a 500; refused here with a 400 that names the item.
SUPPORTED_INPUT = "messages, function_call, function_call_output and reasoning items"


def unsupported_input(request: Any) -> tuple[str, str] | None:
    """(param, message) for the first input item of `request` (a validated ResponsesRequest) that vLLM cannot
    read, or None."""
    from openai.types.responses import (
        ResponseFunctionToolCall,
        ResponseOutputMessage,
        ResponseReasoningItem,
    )
    from openai.types.responses.response_function_tool_call_output_item import (
        ResponseFunctionToolCallOutputItem,
    )

    items = request.input
    if not isinstance(items, list):
        return None
    read = (ResponseFunctionToolCall, ResponseReasoningItem, ResponseFunctionToolCallOutputItem)
    for index, item in enumerate(items):
        where = f"input[{index}]"
        if isinstance(item, dict):
            kind = item.get("type") or ("message" if "role" in item else None)
            if kind in ("message", "function_call_output"):
                continue
        elif isinstance(item, read):
            continue
        elif isinstance(item, ResponseOutputMessage):
            # vLLM reads an assistant output message as its first content part's text.
            if item.content and isinstance(getattr(item.content[0], "text", None), str):
                continue
            return f"{where}.content", "An assistant output message needs an output_text as its first content part."
        else:
            kind = getattr(item, "type", None)
        return (
            f"{where}.type",
            f"Input items of type {kind!r} are not supported here; this server reads {SUPPORTED_INPUT}.",
        )
    return None


def streamed(data: Any) -> bool:
    """Whether the request (JSON or validated) asks for a stream."""
    value = data.get("stream") if isinstance(data, dict) else getattr(data, "stream", False)
    return value is True


async def engine_answer(handler: Any, data: Any) -> AsyncGenerator[Any, None]:
    """vLLM's answer to one Responses request (its JSON) on this replica (`handler`: vLLM's
    `OpenAIServingResponses`, None when the engine does not generate text)."""
    from pydantic import ValidationError
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse as VLLMErrorResponse
    from vllm.exceptions import VLLMClientError

    if handler is None:
        yield _error(404, "This model does not serve the Responses API.")
        return
    try:
        request = request_from(data)
    except ValidationError as error:
        problems = error.errors()
        where = ".".join(str(part) for part in problems[0]["loc"]) if problems else ""
        message = f"{where}: {problems[0]['msg']}" if problems and where else str(error)
        yield _error(400, message, where or None)
        return
    refused = unsupported_input(request)
    if refused is not None:
        yield _error(400, refused[1], refused[0])
        return
    try:
        result = await handler.create_responses(request)
    except (ValueError, VLLMClientError) as error:  # what vLLM's own server answers with a 400
        yield _error(400, str(error), getattr(error, "parameter", None))
        return
    if isinstance(result, VLLMErrorResponse):
        yield _error(int(result.error.code), result.error.message, result.error.param)
    elif hasattr(result, "model_dump"):
        yield result.model_dump(mode="json", by_alias=True)
    else:
        async for event in result:
            yield sse_event(event)


# ---- ingress ----


def _raise_if_error(item: Any) -> None:
    error = getattr(item, "error", None)
    if error is not None and not isinstance(item, dict):
        status = int(getattr(error, "code", 500) or 500)
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        message, param = str(getattr(error, "message", "")), getattr(error, "param", None)
        raise APIError(status, message, param=param if isinstance(param, str) else None, headers=headers)


async def ingress_answer(handle: Any, body: dict[str, Any]) -> Response:
    """The HTTP answer to `body` (the request's JSON, the model chosen) from the engine deployment's
    `handle` (a streaming handle, multiplexed for an adapter)."""
    stream: AsyncIterator[Any] = handle.responses.remote(body, None)
    try:
        async with asyncio.timeout(router_timeout_s()):
            first = await anext(stream)
    except TimeoutError:
        raise APIError(408, "Request server side timeout") from None
    except StopAsyncIteration:
        raise APIError(500, "The engine gave no answer.") from None
    head = first[0] if isinstance(first, list) and first else first
    _raise_if_error(head)
    if isinstance(head, dict):
        return JSONResponse(head)

    async def events() -> AsyncGenerator[str, None]:
        item = first
        while True:
            parts = item if isinstance(item, list) else [item]
            for part in parts:
                _raise_if_error(part)
            yield "".join(str(part) for part in parts)
            try:
                item = await anext(stream)
            except StopAsyncIteration:
                return

    return StreamingResponse(events(), media_type="text/event-stream")


def input_of(body: Any) -> Any:
    """The request's input as plain JSON data (for the request log; pydantic's serialiser also turns the
    iterators some input items hold into lists)."""
    if hasattr(body, "model_dump"):
        return body.model_dump(mode="json", include={"input"}).get("input")
    return body.get("input") if isinstance(body, dict) else None
