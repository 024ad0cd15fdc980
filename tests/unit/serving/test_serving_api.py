"""The HTTP API in-process (httpx ASGI transport, stub engine): routes, errors, auth, limits, SSE."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bigmodel_serving.api import create_api, openapi_document

pytestmark = pytest.mark.anyio

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 4}


def _events(text: str) -> list[Any]:
    events = []
    for block in text.split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


async def test_models_lists_base_and_adapters(api_client: Any) -> None:
    async with api_client() as (client, _):
        response = await client.get("/v1/models")
    assert response.status_code == 200
    assert [card["id"] for card in response.json()["data"]] == ["tiny", "tiny:sql"]
    assert response.json()["data"][1]["parent"] == "tiny"


async def test_chat_completion(api_client: Any) -> None:
    async with api_client() as (client, _):
        response = await client.post("/v1/chat/completions", json=CHAT)
    body = response.json()
    assert response.status_code == 200, body
    assert body["object"] == "chat.completion"
    assert body["model"] == "tiny"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "alpha bravo charlie delta"}
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 4
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + 4


async def test_adapter_by_model_name(api_client: Any) -> None:
    async with api_client() as (client, _):
        response = await client.post("/v1/chat/completions", json={**CHAT, "model": "tiny:sql"})
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"].startswith("bravo")  # the stub shifts for adapters
    assert response.json()["model"] == "tiny:sql"


async def test_completion_with_echo_stop_and_n(api_client: Any) -> None:
    request = {"model": "tiny", "prompt": "say:", "max_tokens": 6, "stop": [" charlie"], "n": 2, "echo": True}
    async with api_client() as (client, _):
        response = await client.post("/v1/completions", json=request)
    body = response.json()
    assert response.status_code == 200, body
    assert [choice["text"] for choice in body["choices"]] == ["say:alpha bravo", "say:alpha bravo"]
    assert {choice["finish_reason"] for choice in body["choices"]} == {"stop"}


async def test_default_completion_max_tokens_is_16(api_client: Any) -> None:
    async with api_client() as (client, _):
        response = await client.post("/v1/completions", json={"model": "tiny", "prompt": "x"})
    assert response.json()["usage"]["completion_tokens"] == 16


async def test_chat_stream(api_client: Any) -> None:
    request = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with api_client() as (client, _):
        response = await client.post("/v1/chat/completions", json=request)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = _events(response.text)
    assert events[-1] == "[DONE]"
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(event["choices"][0]["delta"].get("content", "") for event in events[:-2])
    assert text == "alpha bravo charlie delta"
    assert events[-3]["choices"][0]["finish_reason"] == "length"
    assert events[-2]["choices"] == [] and events[-2]["usage"]["completion_tokens"] == 4


async def test_completion_stream(api_client: Any) -> None:
    async with api_client() as (client, _):
        response = await client.post(
            "/v1/completions", json={"model": "tiny", "prompt": "x", "max_tokens": 3, "stream": True}
        )
    events = _events(response.text)
    assert events[-1] == "[DONE]"
    assert "".join(event["choices"][0]["text"] for event in events[:-1]) == "alpha bravo charlie"
    assert all(event["object"] == "text_completion" for event in events[:-1])


LONG_PROMPT = " ".join(["word"] * 80)  # the stub counts one token per word; max_model_len is 64


@pytest.mark.parametrize(
    ("path", "body", "status", "code"),
    [
        ("/v1/chat/completions", b"{not json", 400, "invalid_json"),
        ("/v1/chat/completions", b"[]", 400, "invalid_type"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": "5"}, 400, "invalid_value"),
        ("/v1/chat/completions", {**CHAT, "temperature": 3}, 400, "invalid_value"),
        ("/v1/chat/completions", {**CHAT, "messages": [{"role": "robot", "content": "x"}]}, 400, "invalid_value"),
        ("/v1/chat/completions", {**CHAT, "frobnicate": True}, 400, "unknown_parameter"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 0}, 400, "invalid_value"),
        ("/v1/chat/completions", {**CHAT, "max_tokens": 100_000}, 400, "context_length_exceeded"),
        (
            "/v1/chat/completions",
            {**CHAT, "messages": [{"role": "user", "content": LONG_PROMPT}]},
            400,
            "context_length_exceeded",
        ),
        ("/v1/chat/completions", {**CHAT, "n": 9}, 400, "invalid_value"),
        ("/v1/chat/completions", {**CHAT, "logprobs": True}, 400, "unsupported_parameter"),
        ("/v1/chat/completions", {**CHAT, "model": "gpt-4"}, 404, "model_not_found"),
        ("/v1/chat/completions", {**CHAT, "model": "tiny:nope"}, 404, "model_not_found"),
        ("/v1/completions", {"model": "tiny", "prompt": ["a", "b"]}, 400, None),
        ("/v1/completions", {"model": "tiny", "prompt": "x", "suffix": "y"}, 400, "unsupported_parameter"),
        ("/v1/completions", {"model": "tiny"}, 400, "invalid_value"),
        ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/tmp"}, 404, "unknown_url"),
        ("/v1/models", {}, 405, "method_not_allowed"),
    ],
)
async def test_bad_requests_get_openai_errors(
    api_client: Any, path: str, body: Any, status: int, code: str | None
) -> None:
    async with api_client() as (client, _):
        if isinstance(body, bytes):
            response = await client.post(path, content=body, headers={"content-type": "application/json"})
        else:
            response = await client.post(path, json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    if code is not None:
        assert error["code"] == code


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/redoc", "/", "/v1", "/v1/embeddings", "/-/routes"])
async def test_only_allowlisted_routes(api_client: Any, path: str) -> None:
    async with api_client() as (client, _):
        response = await client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"


async def test_body_cap_with_and_without_content_length(api_client: Any) -> None:
    big = json.dumps({**CHAT, "user": "x" * 2_000}).encode()

    async def chunked() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 500):
            yield big[start : start + 500]

    async with api_client({"limits": {"max_body_bytes": 1_000}}) as (client, _):
        declared = await client.post("/v1/chat/completions", content=big)
        streamed = await client.post("/v1/chat/completions", content=chunked())
    assert declared.status_code == 413
    assert streamed.status_code == 413
    assert streamed.json()["error"]["code"] == "request_too_large"


async def test_api_keys_and_rotation(api_client: Any, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# team a\nkey-1\n")
    async with api_client({"auth": {"api_keys_file": str(keys)}}) as (client, _):
        missing = await client.get("/v1/models")
        wrong = await client.get("/v1/models", headers={"Authorization": "Bearer nope"})
        right = await client.get("/v1/models", headers={"Authorization": "Bearer key-1"})
        unknown_path = await client.get("/v1/other", headers={"Authorization": "Bearer key-1"})
        health = await client.get("/health")
        metrics = await client.get("/metrics")
        keys.write_text("key-2-rotated\n")
        old = await client.get("/v1/models", headers={"Authorization": "Bearer key-1"})
        new = await client.get("/v1/models", headers={"Authorization": "Bearer key-2-rotated"})
    assert missing.status_code == wrong.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    assert right.status_code == 200
    assert unknown_path.status_code == 404
    assert health.status_code == metrics.status_code == 200
    assert old.status_code == 401
    assert new.status_code == 200


async def test_over_capacity_answers_429_fast(api_client: Any) -> None:
    limits = {"limits": {"max_ongoing_requests": 1, "max_queued_requests": 1}}
    async with api_client(limits, ttft_s=0.5) as (client, runtime):
        running = [asyncio.create_task(client.post("/v1/chat/completions", json=CHAT)) for _ in range(2)]
        for _ in range(400):  # until the second request waits in line (bounded: 2 s)
            if runtime.generator.gate.waiting >= 1:
                break
            await asyncio.sleep(0.005)
        started = time.perf_counter()
        rejected = await client.post("/v1/chat/completions", json=CHAT)
        elapsed = time.perf_counter() - started
        finished = await asyncio.gather(*running)
    assert rejected.status_code == 429
    assert rejected.headers["retry-after"] == "1"
    assert rejected.json()["error"]["type"] == "rate_limit_error"
    assert elapsed < 0.25  # answered without waiting for the running request (0.5 s)
    assert [response.status_code for response in finished] == [200, 200]


async def test_timeout_gives_504_and_stream_error_event(api_client: Any) -> None:
    async with api_client({"limits": {"request_timeout_s": 0.1}}, per_token_s=0.2) as (client, runtime):
        plain = await client.post("/v1/chat/completions", json=CHAT)
        streamed = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        assert runtime.generator.gate.ongoing == 0
    assert plain.status_code == 504
    assert plain.json()["error"]["code"] == "timeout"
    events = _events(streamed.text)
    assert events[-1]["error"]["code"] == "timeout"


async def test_metrics_count_requests_errors_tokens_and_ttft(api_client: Any) -> None:
    async with api_client() as (client, _):
        await client.post("/v1/chat/completions", json={**CHAT, "model": "tiny:sql"})
        await client.post("/v1/chat/completions", json={**CHAT, "model": "nope"})
        text = (await client.get("/metrics")).text
    assert 'bigmodel_requests_total{adapter="sql",code="200",model="tiny",route="/v1/chat/completions"} 1.0' in text
    assert 'bigmodel_request_errors_total{adapter="",code="404",model="",route="/v1/chat/completions"} 1.0' in text
    assert 'bigmodel_completion_tokens_total{adapter="sql",model="tiny"} 4.0' in text
    assert 'bigmodel_time_to_first_token_seconds_count{adapter="sql",model="tiny"} 1.0' in text
    assert "bigmodel_queue_depth 0.0" in text
    assert "_created" not in text


async def test_openapi_document_describes_the_routes(api_client: Any) -> None:
    async with api_client() as (_, runtime):
        document = openapi_document(create_api(runtime))
    assert set(document["paths"]) == {"/v1/models", "/v1/chat/completions", "/v1/completions", "/health", "/metrics"}
    body = document["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatCompletionRequest"}
    assert "ChatMessage" in document["components"]["schemas"]
