"""Malformed chat and Responses bodies that vLLM's request model accepts lazily: each is a 4xx with an OpenAI body, never a 5xx.

Found by schemathesis in CI (a content part `{"type": "text", "text": []}` came back as a 500); these pin the
class down deterministically next to the property-based run.
"""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import MODEL, ServingStack

HOSTILE_MESSAGES: list[Any] = [
    [{"role": "assistant", "content": [{"type": "text", "text": []}]}],
    [{"role": "user", "content": [{"type": "text", "text": 5}]}],
    [{"role": "user", "content": [5]}],
    [{"role": "user", "content": {"a": 1}}],
    [{"role": "user", "content": [{"type": "no-such-part"}]}],
    [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": 5}}]}],
    [{"role": "assistant", "content": None, "tool_calls": 5}],
    [{"role": "assistant", "content": None, "tool_calls": [5]}],
    [{"content": "no role"}],
    [{"role": 5, "content": "hi"}],
]


@pytest.mark.parametrize("messages", HOSTILE_MESSAGES, ids=[str(i) for i in range(len(HOSTILE_MESSAGES))])
def test_malformed_messages_are_a_4xx(serving: ServingStack, messages: Any) -> None:
    with serving.http() as client:
        response = client.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 2})
    assert 400 <= response.status_code < 500, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


# POST /v1/responses input items the pinned vLLM does not convert (schemathesis found each as a 500): pydantic
# validation made iterators Ray could not pickle, then vLLM's chat renderer failed on the items themselves.
HOSTILE_RESPONSES_INPUT: list[Any] = [
    [{"type": "configuration_update"}],
    [{"type": "file_search_call", "id": "fs_1", "queries": [], "status": "completed", "results": [{}]}],
    [{"type": "computer_call_output", "call_id": "c_1", "output": {"type": "computer_screenshot"}}],
    [{"type": "message", "id": "m_1", "role": "assistant", "status": "completed", "content": []}],
    [
        {
            "type": "message",
            "id": "m_1",
            "role": "assistant",
            "status": "completed",
            "content": [{"type": "refusal", "refusal": "no"}],
        }
    ],
]


@pytest.mark.parametrize("items", HOSTILE_RESPONSES_INPUT, ids=[str(i) for i in range(len(HOSTILE_RESPONSES_INPUT))])
def test_responses_input_vllm_cannot_read_is_a_400(serving: ServingStack, items: Any) -> None:
    with serving.http() as client:
        response = client.post("/v1/responses", json={"model": MODEL, "input": items, "max_output_tokens": 2})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["param"].startswith("input")
