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
    CompletionStore,
    FeedbackActor,
    FeedbackSinkError,
    conversation_of,
    open_sink,
    parse_feedback_request,
    render_feedback_metrics,
)

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


def test_the_store_answers_only_the_key_that_asked_and_forgets_after_the_ttl() -> None:
    clock = Clock()
    store = CompletionStore(ttl_s=60, clock=clock)
    store.remember("c1", "alice", "m", _turns(), at=0)
    assert store.get("c1", "alice") is not None
    assert store.get("c1", "bob") is None
    assert store.get("c2", "alice") is None
    clock.now += 61
    assert store.get("c1", "alice") is None
    assert store.bytes == 0 and not store.entries


def test_the_store_is_bounded_by_entries_and_bytes() -> None:
    store = CompletionStore(max_entries=3, clock=Clock())
    for index in range(5):
        store.remember(f"c{index}", "k", "m", _turns(), at=0)
    assert list(store.entries) == ["c2", "c3", "c4"]
    small = CompletionStore(max_bytes=2000, clock=Clock())
    for index in range(5):
        small.remember(f"c{index}", "k", "m", _turns("x" * 500), at=0)
    assert small.bytes <= 2000 and list(small.entries)[-1] == "c4" and len(small.entries) < 5
    small.remember("huge", "k", "m", _turns("x" * 5000), at=0)
    assert "huge" not in small.entries


# ---- the sink and the actor (its class, without Ray) ----


def test_sinks_by_location(tmp_path: Path) -> None:
    assert open_sink(FeedbackArgs(enabled=True, sink_path=str(tmp_path))).location == str(tmp_path)
    assert open_sink(FeedbackArgs(enabled=True, sink_uri=tmp_path.as_uri())).location == str(tmp_path)
    assert open_sink(FeedbackArgs(enabled=True, sink_uri="s3://bucket/feedback")).location == "s3://bucket/feedback"
    with pytest.raises(FeedbackSinkError, match="gs:// sinks are not supported by this build"):
        open_sink(FeedbackArgs(enabled=True, sink_uri="gs://bucket/feedback"))


def _actor(tmp_path: Path, clock: Clock | None = None, **settings: Any) -> FeedbackActor:
    actor = FeedbackActor(clock=clock or Clock())
    problem = actor.configure({"enabled": True, "sink_path": str(tmp_path), **settings})
    assert problem is None
    return actor


def test_feedback_appends_a_redacted_chat_record(tmp_path: Path) -> None:
    actor = _actor(tmp_path)
    conversation = [
        {"role": "system", "content": "Support bot."},
        {"role": "user", "content": f"My email is {EMAIL}, reset my password"},
        {"role": "assistant", "content": "Done."},
    ]
    actor.remember("chatcmpl-1", "alice", "tiny:support.ftj-1", conversation)
    assert actor.feedback("chatcmpl-1", "alice", 2, f"Sent a link to {EMAIL}.") == {"status": "recorded"}
    [record] = _records(tmp_path)
    assert set(record) == {"messages", "rating", "correction", "model", "key", "id", "ts", "answered_at"}
    assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
    assert record["messages"][2]["content"] == "Done."
    assert EMAIL not in json.dumps(record)
    assert "EMAIL" in record["messages"][1]["content"] and "EMAIL" in record["correction"]
    assert (record["rating"], record["model"], record["key"], record["id"]) == (
        2,
        "tiny:support.ftj-1",
        "alice",
        "chatcmpl-1",
    )
    assert record["ts"].endswith("Z")
    assert actor.scores("tiny:support.ftj-1") == (1, 2.0)
    assert actor.scores("other") == (0, 0.0)


def test_unknown_other_keys_and_expired_ids_are_not_found(tmp_path: Path) -> None:
    clock = Clock()
    actor = _actor(tmp_path, clock, ttl_s=10)
    actor.remember("cmpl-1", "alice", "tiny", _turns())
    assert actor.feedback("cmpl-1", "bob", 5, None) == {"status": "not_found"}
    assert actor.feedback("cmpl-nope", "alice", 5, None) == {"status": "not_found"}
    clock.now += 11
    assert actor.feedback("cmpl-1", "alice", 5, None) == {"status": "not_found"}
    assert _records(tmp_path) == []


def test_answers_are_redacted_in_the_background_before_any_feedback(tmp_path: Path) -> None:
    actor = _actor(tmp_path)
    actor.remember(
        "c", "k", "m", [{"role": "user", "content": f"mail {EMAIL}"}, {"role": "assistant", "content": "ok"}]
    )
    actor.redact_pending()
    entry = actor.book.store.entries["c"]
    assert entry.redacted and EMAIL not in entry.messages[0]["content"]
    assert actor.redact_pending() == 0


def test_scores_and_metrics_per_model(tmp_path: Path) -> None:
    actor = _actor(tmp_path)
    for index, (model, rating) in enumerate([("m:a.v1", 5), ("m:a.v1", 3), ("m:a.v2", 1)]):
        actor.remember(f"c{index}", "k", model, _turns())
        actor.feedback(f"c{index}", "k", rating, None)
    assert actor.all_scores() == {"m:a.v1": (2, 4.0), "m:a.v2": (1, 1.0)}
    families = {f.name: f for f in text_string_to_metric_families(render_feedback_metrics(actor.all_scores()))}
    totals = {s.labels["model"]: s.value for s in families["bigmodel_feedback"].samples}
    means = {s.labels["model"]: s.value for s in families["bigmodel_feedback_rating_mean"].samples}
    assert totals == {"m:a.v1": 2, "m:a.v2": 1} and means == {"m:a.v1": 4.0, "m:a.v2": 1.0}


def test_an_unusable_sink_or_disabled_feedback_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    actor = FeedbackActor(clock=Clock())
    assert "not supported" in str(actor.configure({"enabled": True, "sink_uri": "gs://bucket/prefix"}))
    actor.remember("c", "k", "m", _turns())
    result = actor.feedback("c", "k", 5, None)
    assert result["status"] == "unavailable" and "gs://" in result["message"]
    assert "not enabled" in str(actor.configure({"enabled": False}))
    blocked = tmp_path / "file"
    blocked.write_text("a file where the sink directory should be")
    actor = _actor(blocked / "sub")
    actor.remember("c", "k", "m", _turns())
    result = actor.feedback("c", "k", 5, None)
    assert result["status"] == "unavailable" and "could not be written" in result["message"]


def test_reconfiguring_keeps_remembered_answers(tmp_path: Path) -> None:
    actor = _actor(tmp_path)
    actor.remember("c", "k", "m", _turns())
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

    def remote(self, *args: Any) -> Any:
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


def test_the_client_maps_the_actors_answers_to_http() -> None:
    import asyncio

    from bigmodel_serving.feedback import FeedbackClient

    args = FeedbackArgs(enabled=True, sink_path="/tmp/unused")
    body = b'{"id": "chatcmpl-1", "rating": 3}'
    recorded = FeedbackClient(args, _FakeActor({"status": "recorded"}, {"m": (1, 3.0)}))
    assert asyncio.run(recorded.submit("alice", body)) == {
        "id": "chatcmpl-1",
        "object": "feedback",
        "status": "recorded",
    }
    assert "bigmodel_feedback_total" in asyncio.run(recorded.metrics_text())
    for answer, status in (
        ({"status": "not_found"}, 404),
        ({"status": "unavailable", "message": "disk full"}, 503),
        (RuntimeError("actor restarting"), 503),
    ):
        with pytest.raises(APIError) as caught:
            asyncio.run(FeedbackClient(args, _FakeActor(answer, {})).submit("alice", body))
        assert caught.value.status == status
        if status == 503:
            assert caught.value.headers["Retry-After"]
    with pytest.raises(DependencyUnavailableError):  # /metrics leaves the feedback families out
        asyncio.run(FeedbackClient(args, _FakeActor({}, RuntimeError("down"))).metrics_text())


class _Answers:
    """`.remote()` answers from a list, one per call (the last repeats); counts the calls."""

    def __init__(self, *answers: Any) -> None:
        self.answers, self.calls = list(answers), 0

    def remote(self, *args: Any) -> Any:
        answer = self.answers[min(self.calls, len(self.answers) - 1)]
        self.calls += 1

        async def call() -> Any:
            return answer

        return call()


def test_an_id_another_replica_just_answered_is_asked_about_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray orders one caller's calls only: replica A's `remember` may reach the actor after the feedback
    that came in through replica B. The client asks again before answering 404."""
    import asyncio

    from bigmodel_serving import feedback as module
    from bigmodel_serving.feedback import FeedbackClient

    monkeypatch.setattr(module, "NOT_FOUND_RETRIES_S", (0.0, 0.0))
    args = FeedbackArgs(enabled=True, sink_path="/tmp/unused")
    body = b'{"id": "chatcmpl-1", "rating": 3}'
    late = _FakeActor(None, {})
    late.feedback = _Answers({"status": "not_found"}, {"status": "recorded"})
    assert asyncio.run(FeedbackClient(args, late).submit("alice", body))["status"] == "recorded"
    assert late.feedback.calls == 2
    unknown = _FakeActor(None, {})
    unknown.feedback = _Answers({"status": "not_found"})
    with pytest.raises(APIError) as caught:
        asyncio.run(FeedbackClient(args, unknown).submit("alice", body))
    assert caught.value.status == 404 and unknown.feedback.calls == 3


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
