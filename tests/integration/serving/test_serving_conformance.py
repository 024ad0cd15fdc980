"""OpenAI compatibility with the real clients users pick: openai-python, langchain-openai, litellm.

Against the application as `bigmodel serve` deploys it (the operator's rendering through Serve's
declarative API): vLLM's CPU build through Ray Serve LLM, our ingress with keys on. The model is
random, so the tests check shapes and guarantees (valid JSON from structured outputs, parseable tool
calls, usage), never wording.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Literal

import pytest
from pydantic import BaseModel

from .conftest import ADAPTER, MODEL, ServingStack

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")

USER = [{"role": "user", "content": "Say hello."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            # An enum keeps a random model's arguments valid JSON (free strings may carry raw control characters).
            "properties": {"city": {"type": "string", "enum": ["Paris", "Rome", "Oslo"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
SMALL_SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string", "maxLength": 10}, "score": {"type": "integer"}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}


class Verdict(BaseModel):
    # An enum, not a free string: the random model once wrote a raw control character (\x1f) inside a
    # schema-constrained string, which no JSON parser accepts (the same fix as the tools' city enum).
    answer: Literal["yes", "no", "unsure"]
    ok: bool


# ---- openai-python ----


def test_models_list_and_retrieve(serving: ServingStack) -> None:
    client = serving.openai()
    ids = [model.id for model in client.models.list()]
    assert ids == [MODEL, f"{MODEL}:{ADAPTER}"]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_n_stop_seed_and_max_completion_tokens(serving: ServingStack) -> None:
    client = serving.openai()
    first = client.chat.completions.create(
        model=MODEL, messages=USER, n=2, seed=7, temperature=1.0, max_completion_tokens=8, stop=["\n"]
    )
    assert len(first.choices) == 2
    assert all(choice.finish_reason in ("stop", "length") for choice in first.choices)
    assert all("\n" not in (choice.message.content or "") for choice in first.choices)
    assert first.usage is not None and first.usage.completion_tokens <= 16
    again = client.chat.completions.create(
        model=MODEL, messages=USER, n=2, seed=7, temperature=1.0, max_completion_tokens=8, stop=["\n"]
    )
    assert [c.message.content for c in again.choices] == [c.message.content for c in first.choices]
    none_n = client.chat.completions.create(model=MODEL, messages=USER, n=None, max_tokens=2)
    assert len(none_n.choices) == 1


def test_chat_logprobs(serving: ServingStack) -> None:
    response = serving.openai().chat.completions.create(
        model=MODEL, messages=USER, max_tokens=4, logprobs=True, top_logprobs=3
    )
    content = response.choices[0].logprobs.content
    assert content and all(len(token.top_logprobs) == 3 for token in content)


def test_response_format_json_object_and_schema(serving: ServingStack) -> None:
    client = serving.openai()
    as_object = client.chat.completions.create(
        model=MODEL, messages=USER, max_tokens=200, response_format={"type": "json_object"}
    )
    if as_object.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(as_object.choices[0].message.content or ""), dict)
    schema = client.chat.completions.create(
        model=MODEL,
        messages=USER,
        max_tokens=100,
        response_format={"type": "json_schema", "json_schema": {"name": "small", "schema": SMALL_SCHEMA}},
    )
    value = json.loads(schema.choices[0].message.content or "")
    assert set(value) == {"answer", "score"} and isinstance(value["score"], int)


def test_parse_with_a_pydantic_model(serving: ServingStack) -> None:
    parsed = serving.openai().chat.completions.parse(
        model=MODEL, messages=USER, max_tokens=100, response_format=Verdict
    )
    assert isinstance(parsed.choices[0].message.parsed, Verdict)


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_tools_give_parseable_tool_calls(serving: ServingStack, tool_choice: Any) -> None:
    response = serving.openai().chat.completions.create(
        model=MODEL, messages=USER, max_tokens=400, tools=[WEATHER_TOOL], tool_choice=tool_choice
    )
    choice = response.choices[0]
    calls = choice.message.tool_calls
    print(
        f"chat tool_choice {tool_choice}: {choice.finish_reason} {[(c.function.name, c.function.arguments) for c in calls or []]}"
    )
    assert calls, (choice.finish_reason, choice.message.content)
    assert calls[0].function.name == "get_weather"
    assert "city" in json.loads(calls[0].function.arguments)


def test_tools_auto_answers_with_content_or_tool_calls(serving: ServingStack) -> None:
    """auto: the parser reads what the model wrote; a random model writes text, so a plain message comes back."""
    response = serving.openai().chat.completions.create(
        model=MODEL, messages=USER, max_tokens=16, tools=[WEATHER_TOOL], tool_choice="auto"
    )
    choice = response.choices[0]
    assert choice.finish_reason in ("stop", "length", "tool_calls")
    assert choice.message.tool_calls or isinstance(choice.message.content, str)
    print(f"tool_choice auto: finish_reason={choice.finish_reason} tool_calls={choice.message.tool_calls!r}")


def test_tools_streamed_required(serving: ServingStack) -> None:
    stream = serving.openai().chat.completions.create(
        model=MODEL, messages=USER, max_tokens=400, tools=[WEATHER_TOOL], tool_choice="required", stream=True
    )
    deltas = [chunk.choices[0].delta for chunk in stream if chunk.choices]
    names = [call.function.name for delta in deltas for call in delta.tool_calls or [] if call.function.name]
    assert names and set(names) == {"get_weather"}, deltas[-3:]  # required: one call or more


# ---- openai-python: the Responses API (vLLM's, through our ingress) ----

RESPONSES_TOOL = {"type": "function", **WEATHER_TOOL["function"]}


def test_responses_create(serving: ServingStack) -> None:
    """POST /v1/responses: vLLM's Responses API through our ingress, with the key and quota of chat."""
    client = serving.openai()
    response = client.responses.create(model=MODEL, input="Say hello.", max_output_tokens=8)
    print(f"responses.create: {response.status} {response.output_text!r} usage={response.usage}")
    assert response.object == "response" and response.model == MODEL and response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete")
    assert isinstance(response.output_text, str)
    assert response.usage is not None and response.usage.input_tokens > 0 and response.usage.output_tokens >= 1
    chat = client.responses.create(
        model=MODEL,
        instructions="Be brief.",
        input=[{"role": "user", "content": "Hi"}],
        max_output_tokens=4,
        temperature=0,
    )
    assert chat.output and chat.output[0].type == "message"
    adapter = client.responses.create(model=f"{MODEL}:{ADAPTER}", input="Hi", max_output_tokens=4)
    assert adapter.model == f"{MODEL}:{ADAPTER}"


def test_responses_streamed(serving: ServingStack) -> None:
    events = list(serving.openai().responses.create(model=MODEL, input="Count.", max_output_tokens=6, stream=True))
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete"), kinds
    assert "response.output_text.delta" in kinds or events[-1].response.output, kinds  # special tokens show no text
    last = events[-1].response
    assert last.usage is not None and last.usage.output_tokens >= 1


@pytest.mark.parametrize("tool_choice", ["auto", "required", {"type": "function", "name": "get_weather"}])
def test_responses_with_tools(serving: ServingStack, tool_choice: Any) -> None:
    """auto: whatever the random model writes; required and named: a parseable call once the answer completes."""
    response = serving.openai().responses.create(
        model=MODEL, input="Weather in Oslo?", tools=[RESPONSES_TOOL], tool_choice=tool_choice, max_output_tokens=400
    )
    calls = [item for item in response.output if item.type == "function_call"]
    print(f"responses + tool_choice {tool_choice}: {response.status} {[(c.name, c.arguments) for c in calls]}")
    assert response.object == "response" and response.status in ("completed", "incomplete")
    if tool_choice != "auto" and response.status == "completed":
        assert calls and calls[0].name == "get_weather" and "city" in json.loads(calls[0].arguments)
        assert calls[0].call_id


def test_responses_errors_are_openai_shaped(serving: ServingStack) -> None:
    import openai

    client = serving.openai()
    with pytest.raises(openai.NotFoundError) as missing:  # vLLM keeps no responses (its store is off)
        client.responses.create(model=MODEL, input="Hi", previous_response_id="resp_nope", max_output_tokens=2)
    assert isinstance(missing.value.body, dict) and "message" in missing.value.body
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="Hi", max_output_tokens=2)
    with pytest.raises(openai.AuthenticationError):
        serving.openai(key="sk-wrong").responses.create(model=MODEL, input="Hi", max_output_tokens=2)
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model=MODEL, input="Hi", tool_choice="required", max_output_tokens=2)  # no tools


def test_streaming_with_usage(serving: ServingStack) -> None:
    stream = serving.openai().chat.completions.create(
        model=MODEL, messages=USER, max_tokens=6, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert any(chunk.choices and chunk.choices[0].delta.content for chunk in chunks)


def test_streaming_without_usage_gets_none(serving: ServingStack) -> None:
    chunks = list(serving.openai().chat.completions.create(model=MODEL, messages=USER, max_tokens=4, stream=True))
    assert all(chunk.choices for chunk in chunks)  # the usage chunk we asked vLLM for is not passed on


def test_multi_turn_with_message_model_dump(serving: ServingStack) -> None:
    client = serving.openai()
    messages: list[Any] = [*USER]
    first = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4)
    messages += [first.choices[0].message.model_dump(), {"role": "user", "content": "And again?"}]
    second = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, store=False, metadata={})
    assert second.choices[0].message.role == "assistant"


def test_completions_prompt_list_echo_and_stream(serving: ServingStack) -> None:
    client = serving.openai()
    listed = client.completions.create(model=MODEL, prompt=["One, two", "The sea"], max_tokens=3)
    assert sorted(choice.index for choice in listed.choices) == [0, 1]
    echoed = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=2, echo=True)
    assert echoed.choices[0].text.startswith("The quick brown fox")
    streamed = list(client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, stream=True))
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices)


def test_adapter_serves_and_changes_the_output(serving: ServingStack) -> None:
    client = serving.openai()
    base = client.completions.create(model=MODEL, prompt="Numbers like", max_tokens=8, temperature=0)
    adapted = client.completions.create(model=f"{MODEL}:{ADAPTER}", prompt="Numbers like", max_tokens=8, temperature=0)
    assert adapted.model == f"{MODEL}:{ADAPTER}"
    assert adapted.choices[0].text != base.choices[0].text


# ---- langchain-openai ----


def _chat_model(serving: ServingStack, **kwargs: Any) -> Any:
    from langchain_openai import ChatOpenAI

    return ChatOpenAI(model=MODEL, base_url=f"{serving.url}/v1", api_key=serving.api_key, max_retries=0, **kwargs)


def test_langchain_invoke_stream_batch(serving: ServingStack) -> None:
    llm = _chat_model(serving, max_tokens=4)
    assert isinstance(llm.invoke("Hello").content, str)
    assert len(list(llm.stream("Hello"))) >= 1
    assert len(llm.batch(["Hi", "Bye"])) == 2


def test_langchain_structured_output(serving: ServingStack) -> None:
    llm = _chat_model(serving, max_tokens=100)
    result = llm.with_structured_output(Verdict, method="json_schema").invoke("Judge this.")
    assert isinstance(result, Verdict)


def test_langchain_tools_and_tool_message(serving: ServingStack) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage

    llm = _chat_model(serving, max_tokens=400).bind_tools([WEATHER_TOOL], tool_choice="get_weather")
    asked = llm.invoke([HumanMessage("Weather in Paris?")])
    print(f"langchain bind_tools: {asked.tool_calls}")
    assert asked.tool_calls, (asked.content, asked.response_metadata, asked.invalid_tool_calls)
    call = asked.tool_calls[0]
    assert call["name"] == "get_weather" and "city" in call["args"]
    answer = _chat_model(serving, max_tokens=4).invoke(
        [HumanMessage("Weather in Paris?"), asked, ToolMessage("sunny", tool_call_id=call["id"])]
    )
    assert isinstance(answer.content, str)


def test_langchain_tools_through_the_responses_api(serving: ServingStack) -> None:
    llm = _chat_model(serving, max_tokens=400, use_responses_api=True)
    asked = llm.bind_tools([WEATHER_TOOL], tool_choice="get_weather").invoke("Weather in Rome?")
    print(f"langchain responses bind_tools: {asked.tool_calls} {asked.response_metadata.get('status')}")
    assert asked.tool_calls, (asked.content, asked.response_metadata, asked.invalid_tool_calls)
    assert asked.tool_calls[0]["name"] == "get_weather" and "city" in asked.tool_calls[0]["args"]
    assert isinstance(_chat_model(serving, max_tokens=4, use_responses_api=True).invoke("Hi").content, str | list)


# ---- litellm ----


def test_litellm_completion_stream_and_async(serving: ServingStack) -> None:
    import litellm

    common: dict[str, Any] = {
        "model": f"openai/{MODEL}",
        "api_base": f"{serving.url}/v1",
        "api_key": serving.api_key,
        "messages": USER,
        "max_tokens": 4,
    }
    assert litellm.completion(**common).choices[0].message.role == "assistant"
    assert len(list(litellm.completion(stream=True, **common))) >= 1
    reply = asyncio.run(litellm.acompletion(**common))
    assert reply.choices[0].message.role == "assistant"
