"""Chat messages are checked eagerly: malformed content parts are a 400 naming the field, never a 500."""

from __future__ import annotations

from typing import Any

import pytest

from bigmodel_serving.errors import APIError
from bigmodel_serving.messages import check_messages


def _request(messages: list[dict[str, Any]]) -> Any:
    # vLLM's own request model, as Ray's router receives it (content parts validated lazily).
    from ray.serve.llm.openai_api_models import ChatCompletionRequest

    return ChatCompletionRequest.model_validate({"model": "m", "messages": messages})


@pytest.mark.parametrize(
    ("content", "where"),
    [
        ([{"type": "text", "text": []}], "messages[0].content"),
        ([{"type": "text", "text": 5}], "messages[0].content"),
        ([5], "messages[0].content"),
        ([{"type": "no-such-part"}], "messages[0].content"),
        ([{"type": "image_url", "image_url": {"url": 5}}], "messages[0].content"),
    ],
)
def test_bad_content_parts_are_a_400_naming_the_message(content: Any, where: str) -> None:
    request = _request([{"role": "user", "content": content}])  # accepted: the parts are validated lazily
    with pytest.raises(APIError) as raised:
        check_messages(request.messages)
    assert raised.value.status == 400
    assert raised.value.message.startswith(where)
    assert raised.value.param == "messages.0.content"


def test_good_parts_are_materialised_into_lists() -> None:
    request = _request(
        [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}}],
            },
            {"role": "user", "content": "plain"},
        ]
    )
    check_messages(request.messages)
    assert request.messages[0]["content"] == [{"type": "text", "text": "hi"}]
    assert isinstance(request.messages[1]["tool_calls"], list)
    assert request.messages[2]["content"] == "plain"


def test_a_message_without_a_role_is_a_400() -> None:
    with pytest.raises(APIError) as raised:
        check_messages([{"content": "hi"}])
    assert raised.value.param == "messages.0.role"


def test_a_mapping_as_content_is_a_400() -> None:
    with pytest.raises(APIError) as raised:
        check_messages([{"role": "user", "content": {"a": 1}}])
    assert "must be a string, null or an array" in raised.value.message
