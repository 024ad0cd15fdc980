"""The official openai client against the real app (Ray Serve, tiny transformers model, CPU)."""

from __future__ import annotations

from typing import Any

import openai
import pytest


@pytest.fixture(scope="module")
def client(serving: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{serving.url}/v1", api_key=serving.api_key, max_retries=0, timeout=60)


def test_models_list(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["tiny", "tiny:lora"]


def test_chat_completion(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "Hello!"}], max_tokens=8, temperature=0
    )
    assert response.object == "chat.completion"
    assert response.choices[0].message.role == "assistant"
    assert response.usage is not None
    assert 0 < response.usage.completion_tokens <= 8
    assert response.choices[0].finish_reason in {"stop", "length"}


def test_completion(client: openai.OpenAI) -> None:
    response = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=5, temperature=0)
    assert response.object == "text_completion"
    assert response.usage is not None and response.usage.prompt_tokens > 0


def test_chat_stream_matches_non_stream(client: openai.OpenAI) -> None:
    request = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "Count to three"}],
        "max_tokens": 12,
        "temperature": 0,
    }
    whole = client.chat.completions.create(**request)  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(**request, stream=True))  # type: ignore[call-overload]
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_completion_stream(client: openai.OpenAI) -> None:
    stream = client.completions.create(
        model="tiny", prompt="Hello", max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert any(chunk.choices and chunk.choices[0].finish_reason for chunk in chunks)


def test_adapter_by_name_changes_the_output(client: openai.OpenAI) -> None:
    def answer(model: str) -> str:
        response = client.completions.create(model=model, prompt="Good morning", max_tokens=10, temperature=0)
        assert response.model == model
        return response.choices[0].text

    base, adapted = answer("tiny"), answer("tiny:lora")
    assert base != adapted
    assert answer("tiny") == base  # the adapter is off again for the base model


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert error.value.code == "model_not_found"


def test_wrong_key_is_401(serving: Any) -> None:
    client = openai.OpenAI(base_url=f"{serving.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
