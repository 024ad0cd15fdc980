"""Feedback: request parsing, what the ingress captures, the bounded store, the actor and the JSONL sink."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from bigmodel_serving.actor_calls import DependencyUnavailableError
from bigmodel_serving.args import FeedbackArgs, IngressConfig
from bigmodel_serving.errors import APIError
from bigmodel_serving.feedback import (
    FeedbackActor,
    FeedbackSinkError,
    conversation_of,
    open_sink,
    parse_feedback_request,
    render_feedback_metrics,
)
from bigmodel_serving.feedback_store import CompletionStore

EMAIL = "jane.doe@example.com"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _records(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for path in sorted(directory.glob("*.jsonl")) for line in path.read_text().splitlines()]


# ---- POST /v1/feedback bodies ----


def test_a_valid_body_parses() -> None:
    request = parse_feedback_request(b'{"id": "chatcmpl-1", "rating": 5, "correction": "better"}')
    assert (request.id, request.rating, request.correction) == ("chatcmpl-1", 5, "better")
    assert parse_feedback_request(b'{"id": "cmpl-2", "rating": 1}').correction is None


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b'{"id": "x", "rating": 0}', "rating"),
        (b'{"id": "x", "rating": 6}', "rating"),
        (b'{"id": "x", "rating": "5"}', "rating"),
        (b'{"id": "x", "rating": 4.0}', "rating"),
        (b'{"id": "x", "rating": true}', "rating"),
        (b'{"rating": 3}', "id"),
        (b'{"id": "", "rating": 3}', "id"),
        (b'{"id": "x", "rating": 3, "correction": 7}', "correction"),
        (b'{"id": "x", "rating": 3, "comment": "?"}', "comment"),
        (b"[1, 2]", None),
        (b"not json", None),
        (b"\xff\xfe", None),
        (b"[" * 200_000 + b"]" * 200_000, None),
        (b"", None),
    ],
)
def test_a_bad_body_is_a_400_naming_the_field(body: bytes, param: str | None) -> None:
    with pytest.raises(APIError) as caught:
        parse_feedback_request(body)
    assert caught.value.status == 400
    assert caught.value.param == param


# ---- what the ingress captures ----


def test_chat_conversations_keep_text_turns_only() -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "image_url", "image_url": {}}]},
        {"role": "tool", "content": "42", "tool_call_id": "t"},
        {"role": "user", "content": [{"type": "text", "text": "there"}]},
    ]
    assert conversation_of(messages=messages) == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi "},
        {"role": "user", "content": "there"},
    ]
    assert conversation_of(messages=[{"role": "tool", "content": "x"}]) is None


def test_completion_prompts_become_one_user_turn() -> None:
    assert conversation_of(prompt="Hello") == [{"role": "user", "content": "Hello"}]
    assert conversation_of(prompt=["Hello"]) == [{"role": "user", "content": "Hello"}]
    assert conversation_of(prompt=[1, 2, 3]) is None
    assert conversation_of(prompt=["a", "b"]) is None


# ---- the store ----


def _turns(text: str = "hi") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]


def test_the_store_forgets_after_the_ttl() -> None:
    clock = Clock()
    store = CompletionStore(ttl_s=60, wall=clock)
    store.remember("c1", "alice", "m", _turns(), answered_at=clock.now)
    found = store.lookup("c1")
    assert found is not None and found.key == "alice"
    assert store.lookup("c2") is None
    clock.now += 61
    assert store.lookup("c1") is None
    assert store.bytes == 0 and not store.entries


def test_the_store_is_bounded_by_entries_and_bytes() -> None:
    store = CompletionStore(max_entries=3, wall=Clock())
    for index in range(5):
        store.remember(f"c{index}", "k", "m", _turns(), answered_at=1000.0)
    assert list(store.entries) == ["c2", "c3", "c4"] and store.evicted == 2
    small = CompletionStore(max_bytes=2000, wall=Clock())
    for index in range(5):
        small.remember(f"c{index}", "k", "m", _turns("x" * 500), answered_at=1000.0)
    assert small.bytes <= 2000 and list(small.entries)[-1] == "c4" and len(small.entries) < 5
    small.remember("huge", "k", "m", _turns("x" * 5000), answered_at=1000.0)
    assert "huge" not in small.entries


# ---- the sink and the actor (its class, without Ray) ----


def test_sinks_by_location(tmp_path: Path) -> None:
    assert open_sink(FeedbackArgs(enabled=True, sink_path=str(tmp_path))).location == str(tmp_path)
    assert open_sink(FeedbackArgs(enabled=True, sink_uri=tmp_path.as_uri())).location == str(tmp_path)
    assert open_sink(FeedbackArgs(enabled=True, sink_uri="s3://bucket/feedback")).location == "s3://bucket/feedback"
    with pytest.raises(FeedbackSinkError, match="gs:// sinks are not supported by this build"):
        open_sink(FeedbackArgs(enabled=True, sink_uri="gs://bucket/feedback"))


def _actor(tmp_path: Path, clock: Clock | None = None, **settings: Any) -> FeedbackActor:
    actor = FeedbackActor(wall=clock or Clock())
    problem = actor.configure({"enabled": True, "sink_path": str(tmp_path), **settings})
    assert problem is None
    return actor


def _answer(completion_id: str, key: str, model: str, messages: list[dict[str, str]], at: float = 1000.0) -> dict:
    return {"id": completion_id, "key": key, "model": model, "messages": messages, "answered_at": at}


def test_feedback_appends_a_redacted_chat_record(tmp_path: Path) -> None:
    actor = _actor(tmp_path)
    conversation = [
        {"role": "system", "content": "Support bot."},
        {"role": "user", "content": "My email is [EMAIL], reset my password"},  # as the journal redacted it
        {"role": "assistant", "content": "Done."},
    ]
    actor.remember(_answer("chatcmpl-1", "alice", "tiny:support.ftj-1", conversation))
    assert actor.feedback("chatcmpl-1", "alice", 2, f"Sent a link to {EMAIL}.") == {"status": "recorded"}
    [record] = _records(tmp_path)
    assert set(record) == {"messages", "rating", "correction", "model", "key", "id", "ts", "answered_at"}
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert record["messages"][2]["content"] == "Done."
    assert EMAIL not in json.dumps(record) and "EMAIL" in record["correction"]
    assert (record["rating"], record["model"], record["key"], record["id"]) == (
        2,
        "tiny:support.ftj-1",
        "alice",
        "chatcmpl-1",
    )
    assert record["ts"].endswith("Z")
    assert actor.scores("tiny:support.ftj-1") == (1, 2.0)
    assert actor.quality("tiny:support.ftj-1", since=0) == (1, 1)  # rating 2: a bad answer
    assert actor.scores("other") == (0, 0.0)


def test_unknown_other_keys_and_expired_ids_are_not_found(tmp_path: Path) -> None:
    clock = Clock()
    actor = _actor(tmp_path, clock, ttl_s=10)
    actor.remember(_answer("cmpl-1", "alice", "tiny", _turns(), at=clock.now))
    assert actor.feedback("cmpl-1", "bob", 5, None) == {"status": "not_found"}
    assert actor.feedback("cmpl-nope", "alice", 5, None) == {"status": "not_found"}
    clock.now += 11
    assert actor.feedback("cmpl-1", "alice", 5, None) == {"status": "not_found"}
    assert _records(tmp_path) == []


def test_scores_and_metrics_per_model(tmp_path: Path) -> None:
    actor = _actor(tmp_path)
    for index, (model, rating) in enumerate([("m:a.v1", 5), ("m:a.v1", 3), ("m:a.v2", 1)]):
        actor.remember(_answer(f"c{index}", "k", model, _turns()))
        actor.feedback(f"c{index}", "k", rating, None)
    actor.feedback("c0", "k", 4, None)  # a second rating of one answer: the latest counts
    assert actor.all_scores() == {"m:a.v1": (2, 3.5), "m:a.v2": (1, 1.0)}
    families = {f.name: f for f in text_string_to_metric_families(render_feedback_metrics(actor.all_scores()))}
    totals = {s.labels["model"]: s.value for s in families["bigmodel_feedback"].samples}
    means = {s.labels["model"]: s.value for s in families["bigmodel_feedback_rating_mean"].samples}
    assert totals == {"m:a.v1": 2, "m:a.v2": 1} and means == {"m:a.v1": 3.5, "m:a.v2": 1.0}
    assert len(_records(tmp_path)) == 4  # every feedback is recorded


def test_an_unusable_sink_or_disabled_feedback_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    actor = FeedbackActor(wall=Clock())
    assert "not supported" in str(actor.configure({"enabled": True, "sink_uri": "gs://bucket/prefix"}))
    actor.remember(_answer("c", "k", "m", _turns()))
    result = actor.feedback("c", "k", 5, None)
    assert result["status"] == "unavailable" and "gs://" in result["message"]
    assert "not enabled" in str(actor.configure({"enabled": False}))
    blocked = tmp_path / "file"
    blocked.write_text("a file where the sink directory should be")
    actor = _actor(blocked / "sub")
    actor.remember(_answer("c", "k", "m", _turns()))
    result = actor.feedback("c", "k", 5, None)
    assert result["status"] == "unavailable" and "could not be written" in result["message"]


def test_reconfiguring_keeps_remembered_answers(tmp_path: Path) -> None:
    actor = _actor(tmp_path)
    actor.remember(_answer("c", "k", "m", _turns()))
    assert actor.configure({"enabled": True, "sink_path": str(tmp_path / "new"), "max_entries": 10}) is None
    assert actor.feedback("c", "k", 4, None) == {"status": "recorded"}
    assert len(_records(tmp_path / "new")) == 1


def test_feedback_args_need_one_sink_inside_its_mount() -> None:
    assert not IngressConfig.model_validate({"auth": {"mode": "none"}}).feedback.enabled
    with pytest.raises(ValidationError, match=r"required when feedback\.enabled"):
        FeedbackArgs(enabled=True)
    with pytest.raises(ValidationError, match="not both"):
        FeedbackArgs(sink_path="/a", sink_uri="file:///b")
    with pytest.raises(ValidationError, match=r"'\.\.' segment"):
        FeedbackArgs(enabled=True, sink_path="/mnt/feedback/../../etc")


class _Remote:
    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any) -> Any:
        self.calls.append(args)

        async def call() -> Any:
            if isinstance(self.answer, Exception):
                raise self.answer
            return self.answer

        return call()


class _FakeActor:
    """Stands in for the Ray actor handle: each method's `.remote()` returns an awaitable."""

    def __init__(self, feedback: Any, scores: Any) -> None:
        self.configure = _Remote(None)
        self.remember = _Remote(None)
        self.feedback = _Remote(feedback)
        self.all_scores = _Remote(scores)


def test_the_client_maps_the_actors_answers_to_http(tmp_path: Path) -> None:
    import asyncio

    from bigmodel_serving.feedback import FeedbackClient

    args = FeedbackArgs(enabled=True, sink_path=str(tmp_path))
    body = b'{"id": "chatcmpl-1", "rating": 3}'
    actor = _FakeActor({"status": "recorded"}, {"m": (1, 3.0)})
    recorded = FeedbackClient(args, actor)
    assert asyncio.run(recorded.submit("alice", body)) == {
        "id": "chatcmpl-1",
        "object": "feedback",
        "status": "recorded",
    }
    assert actor.feedback.calls[0][-1] == args.model_dump()  # the settings travel with every call
    assert "bigmodel_feedback_total" in asyncio.run(recorded.metrics_text())
    for answer, status in (
        ({"status": "not_found"}, 404),
        ({"status": "unavailable", "message": "disk full"}, 503),
        (RuntimeError("actor gone"), 503),
    ):
        with pytest.raises(APIError) as caught:
            asyncio.run(FeedbackClient(args, _FakeActor(answer, {})).submit("alice", body))
        assert caught.value.status == status
        if status == 503:
            assert caught.value.headers["Retry-After"]
    with pytest.raises(DependencyUnavailableError):  # /metrics leaves the feedback families out
        asyncio.run(FeedbackClient(args, _FakeActor({}, RuntimeError("down"))).metrics_text())


# ---- the benchmark's report (feedback_bench.py) ----


def _http(p50: float, p99: float) -> dict[str, Any]:
    return {"requests": 400, "rps": 60.0, "latency_p50_ms": p50, "latency_p99_ms": p99, "status_counts": {"200": 400}}


def _piece(p50: float, p99: float) -> dict[str, Any]:
    return {"calls": 400, "p50_ms": p50, "p99_ms": p99}


def test_the_benchmark_section_names_the_floor_and_what_recording_adds(tmp_path: Path) -> None:
    from feedback_bench import SECTION, render_section, summary
    from serving_bench_report import replace_section

    run = {
        "date": "2026-11-30 08:00 UTC",
        "answers": 50,
        "posts": 400,
        "load_average_before": 1.2,
        "http": {
            "1": {
                "models": _http(6.0, 9.0),
                "refused": _http(6.5, 9.5),
                "recorded": _http(8.0, 12.0),
                "load_average": 1.5,
                "access_logs": {"proxy": {"200": _piece(7.0, 11.0)}, "replica": {"200": _piece(4.0, 6.0)}},
            },
            "8": {"refused": _http(20.0, 30.0), "recorded": _http(22.0, 35.0), "load_average": 2.5},
        },
        "server": {
            "ingress_refused": _piece(0.2, 0.4),
            "ingress_recorded": _piece(1.2, 2.0),
            "actor_call": _piece(0.9, 1.5),
            "actor_work": _piece(0.03, 0.1),
            "sink_append": _piece(0.02, 0.05),
            "load_average": 1.4,
        },
    }
    text = render_section(run, machine="a test machine")
    assert text.startswith(SECTION + "\n")
    assert "p99 12.0 ms (**no**)" in text  # end to end misses 5 ms ...
    assert "recording adds 1.5 ms at p50 and 2.5 ms at p99 (yes)" in text  # ... what we add over the floor meets it
    assert "| 8 | `POST /v1/feedback` recorded (200) | 22 | 35 | 60 | 200: 400 | 2.5 |" in text
    assert "6.8 ms outside our ingress code" in text
    assert "| recorded, as the ingress replica timed it (its access log, concurrency 1 above) | 4 | 6 |" in text
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Loop\n\nrows\n")
    replace_section(doc, SECTION, text)
    assert doc.read_text().startswith("# Benchmarks\n\n## Loop\n\nrows\n\n" + SECTION)
    assert summary([0.001, 0.002, 0.003]) == {"calls": 3, "p50_ms": 2.0, "p99_ms": 2.98}


def test_the_benchmark_drives_an_asgi_app_in_process() -> None:
    import asyncio

    from feedback_bench import asgi_post

    seen: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        seen["headers"] = dict(scope["headers"])
        seen["body"] = (await receive())["body"]
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    assert asyncio.run(asgi_post(app, "/v1/feedback", b'{"a": 1}', {"Authorization": "Bearer k"})) == 201
    assert seen["body"] == b'{"a": 1}'
    assert seen["headers"][b"authorization"] == b"Bearer k" and seen["headers"][b"content-length"] == b"8"


def test_the_benchmark_reads_serves_access_logs_from_a_mark_on(tmp_path: Path) -> None:
    from feedback_bench import ServeLogs

    replica = tmp_path / "replica_app_BigModelIngress_abc.log"
    proxy = tmp_path / "proxy_127.0.0.1.log"
    replica.write_text("INFO 08:00 app_BigModelIngress abc id -- POST /v1/feedback 200 9.0ms\n")
    proxy.write_text("")
    logs = ServeLogs(tmp_path, "app")
    mark = logs.mark()
    with replica.open("a") as handle:
        handle.write("INFO 08:01 app_BigModelIngress abc id -- POST /v1/feedback 200 2.0ms\n")
        handle.write("INFO 08:01 app_BigModelIngress abc id -- POST /v1/feedback 400 1.0ms\n")
        handle.write("INFO 08:01 app_BigModelIngress abc id -- GET /v1/models 200 0.5ms\n")
    proxy.write_text("INFO 08:01 proxy 127.0.0.1 id -- POST /v1/feedback 200 3.0ms\n")
    times = logs.feedback_times(mark)
    assert times["replica"]["200"] == {"calls": 1, "p50_ms": 2.0, "p99_ms": 2.0}
    assert times["replica"]["400"]["p50_ms"] == 1.0
    assert times["proxy"] == {"200": {"calls": 1, "p50_ms": 3.0, "p99_ms": 3.0}}
