"""openai_stream (the one reader of answers) and answer_watch (usage, feedback capture, canary name)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from starlette.responses import JSONResponse, StreamingResponse

from bigmodel_serving.canary import Choice, Opened
from bigmodel_serving.ingress_guard import USAGE_SCOPE
from bigmodel_serving.openai_stream import AnswerText, Completion, Event, join_events, parse_packet


def _sse(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload)}\n\n"


CHUNK = {"id": "chatcmpl-s", "model": "tiny", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}
USAGE = {"id": "chatcmpl-s", "model": "tiny", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}


# ---- the parser ----


def test_a_packet_of_several_events_round_trips_unchanged() -> None:
    packet = _sse(CHUNK) + _sse(USAGE) + "data: [DONE]\n\n"
    events = parse_packet(packet)
    assert [event.done for event in events] == [False, False, True]
    assert join_events(events) == packet
    assert events[0].usage is None  # no usage key: not even decoded
    usage = events[1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (3, 2)


def test_crlf_multiline_data_and_events_without_data() -> None:
    events = parse_packet(': keep-alive\r\n\r\ndata: {"a":\r\ndata: 1}\r\n\r\n')
    assert events[0].data is None and events[0].completion() is None
    assert events[1].data == '{"a":\n1}'
    completion = events[1].completion()
    assert completion is not None and completion.data == {"a": 1}


def test_bad_payloads_are_nothing_not_errors() -> None:
    for data in ("{broken", "[1, 2]", '"text"', "[DONE]"):
        assert Event(f"data: {data}", data).completion() is None
    assert Completion.from_body(b"\xff") is None
    assert Event('data: {"usage": 5}', '{"usage": 5}').usage is None


def test_typed_access_and_renaming_re_serializes() -> None:
    chat = Completion(
        {"id": "c1", "model": "tiny:bot.v2", "choices": [{"index": 0, "message": {"content": '"model":"tiny:bot.v2"'}}]}
    )
    text = Completion({"id": "c2", "choices": [{"index": 0, "text": "abc"}, {"index": 1, "text": "d"}]})
    assert (chat.id, chat.model, chat.first_text()) == ("c1", "tiny:bot.v2", '"model":"tiny:bot.v2"')
    assert text.texts() == ["abc", "d"] and text.model is None
    renamed = chat.with_model("tiny:bot")
    decoded = json.loads(renamed.to_json())
    assert decoded["model"] == "tiny:bot"
    assert decoded["choices"][0]["message"]["content"] == '"model":"tiny:bot.v2"'  # the answer's text untouched
    event = Event(f"data: {chat.to_json()}", chat.to_json()).replaced(renamed)
    assert event.encode().startswith('data: {"id":"c1","model":"tiny:bot"')


def test_answer_text_collects_choice_zero_until_done() -> None:
    text = AnswerText()
    more = {"id": "chatcmpl-s", "choices": [{"index": 0, "delta": {"content": "lo"}}, {"index": 1, "delta": {}}]}
    for event in parse_packet(_sse(CHUNK) + _sse(more) + "data: {broken\n\n" + _sse(USAGE)):
        text.feed(event)
    assert not text.done
    for event in parse_packet("data: [DONE]\n\n"):
        text.feed(event)
    assert text.done and (text.id, text.text) == ("chatcmpl-s", "Hello")


# ---- the watcher ----


class _Recorder:
    def __init__(self) -> None:
        self.remembered: list[tuple[str | None, str]] = []
        self.logged: list[tuple[list[str], dict[str, Any]]] = []
        self.finished: list[bool] = []

    async def remember(self, completion_id: str | None, text: str) -> None:
        self.remembered.append((completion_id, text))

    async def log(self, texts: list[str], usage: dict[str, Any]) -> None:
        self.logged.append((texts, usage))

    def finish(self, opened: Opened, failed: bool) -> None:
        self.finished.append(failed)


def _watch(recorder: _Recorder, scope: dict[str, Any], *, strip_usage: bool = False, canary: bool = False) -> Any:
    from bigmodel_serving.answer_watch import AnswerWatch

    opened = None
    if canary:
        choice = Choice(("bot", "bot.v1", "bot.v2"), "candidate", "tiny:bot", "tiny")
        opened = Opened(None, choice, 0.01)
    return AnswerWatch(
        scope,
        strip_usage=strip_usage,
        remember=recorder.remember,
        log=recorder.log,
        canary=recorder if canary else None,  # type: ignore[arg-type]
        opened=opened,
    )


async def _body(response: StreamingResponse) -> str:
    return "".join([str(part) async for part in response.body_iterator])


def test_a_stream_charges_usage_strips_the_usage_chunk_and_renames() -> None:
    async def packets() -> AsyncIterator[str]:
        yield _sse(CHUNK)
        yield _sse(USAGE) + "data: [DONE]\n\n"

    async def scenario() -> None:
        recorder, scope = _Recorder(), {}
        watch = _watch(recorder, scope, strip_usage=True, canary=True)
        response = await watch.watch(StreamingResponse(packets(), media_type="text/event-stream"))
        events = parse_packet(await _body(response))
        assert [event.completion().model for event in events[:-1]] == ["tiny:bot"]  # type: ignore[union-attr]
        assert events[-1].done and len(events) == 2  # the usage-only chunk is gone
        assert scope[USAGE_SCOPE] == (3, 2)
        assert recorder.remembered == [("chatcmpl-s", "Hel")]
        assert recorder.finished == [False]
        assert recorder.logged == [(["Hel"], USAGE["usage"])]

    asyncio.run(scenario())


def test_a_stream_passes_packets_through_untouched_when_nothing_changes() -> None:
    packet = _sse(CHUNK)

    async def packets() -> AsyncIterator[str]:
        yield packet
        yield "data: [DONE]\n\n"

    async def scenario() -> None:
        from bigmodel_serving.answer_watch import AnswerWatch

        scope: dict[str, Any] = {}
        recorder = _Recorder()
        watch = AnswerWatch(scope, strip_usage=False, remember=None, log=recorder.log)
        response = await watch.watch(StreamingResponse(packets()))
        parts = [part async for part in response.body_iterator]
        assert parts[0] is packet  # the same string object: not parsed into a new one
        assert USAGE_SCOPE not in scope

    asyncio.run(scenario())


def test_a_whole_answer_is_read_once_and_renamed() -> None:
    async def scenario() -> None:
        recorder, scope = _Recorder(), {}
        body = {**USAGE, "choices": [{"index": 0, "message": {"content": "hi"}}]}
        response = await _watch(recorder, scope, canary=True).watch(JSONResponse(body))
        assert json.loads(bytes(response.body))["model"] == "tiny:bot"
        assert scope[USAGE_SCOPE] == (3, 2)
        assert recorder.remembered == [("chatcmpl-s", "hi")] and recorder.finished == [False]

    asyncio.run(scenario())


def test_a_stream_that_breaks_is_charged_to_the_version() -> None:
    async def packets() -> AsyncIterator[str]:
        yield _sse(CHUNK)
        raise RuntimeError("engine died")

    async def scenario() -> None:
        recorder = _Recorder()
        response = await _watch(recorder, {}, canary=True).watch(StreamingResponse(packets()))
        with contextlib.suppress(RuntimeError):
            await _body(response)
        assert recorder.finished == [True]
        assert recorder.remembered == []  # no `[DONE]`: the half answer is not kept for feedback

    asyncio.run(scenario())
