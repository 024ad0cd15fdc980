"""Feedback that is never lost, without Ray: the answers' journal, a store that restarts, other replicas.

The real-Ray version (the actor killed mid-traffic, an ingress replica killed) is
tests/integration/serving/test_serving_feedback.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from bigmodel_serving.args import FeedbackArgs
from bigmodel_serving.feedback import FeedbackActor, FeedbackClient
from bigmodel_serving.feedback_journal import AnswerJournal, DirectoryFiles, JournalReader, day_of, days_back

EMAIL = "jane.doe@example.com"
NOW = time.time()  # the sink names its files by the real day


def _redact(text: str) -> str:
    return text.replace(EMAIL, "[EMAIL]")


def _turns(text: str = "hi") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]


def _journal(tmp_path: Path, *answers: tuple[str, str, str, str]) -> AnswerJournal:
    """Writes (id, key, model, user text) answers through a real journal, each awaited."""
    journal = AnswerJournal(DirectoryFiles(tmp_path), _redact, wall=lambda: NOW)

    async def write() -> None:
        for completion_id, key, model, text in answers:
            await journal.append(completion_id, key, model, _turns(text))

    asyncio.run(write())
    return journal


def _settings(tmp_path: Path, **more: Any) -> dict[str, Any]:
    return FeedbackArgs(enabled=True, sink_path=str(tmp_path), **more).model_dump()


def test_the_journal_writes_redacted_answers_durably_before_the_answer_goes_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    journal = _journal(tmp_path, ("chatcmpl-1", "alice", "tiny:bot.v1", f"mail {EMAIL}"), ("c2", "bob", "tiny", "x"))
    [path] = (tmp_path / "answers" / day_of(NOW)).glob("*.jsonl")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in lines] == ["chatcmpl-1", "c2"]
    assert lines[0]["messages"][0]["content"] == "mail [EMAIL]" and EMAIL not in path.read_text()
    assert lines[0]["answered_at"] == NOW and lines[0]["model"] == "tiny:bot.v1" and lines[0]["key"] == "alice"
    assert len(synced) == journal.batches + 1  # each batch, and the directory once (the file was new)


def test_a_restarted_store_configures_itself_and_finds_every_answer_and_rating(tmp_path: Path) -> None:
    _journal(tmp_path, *[(f"c{i}", "alice", "tiny:bot.v2", f"q{i}") for i in range(5)])
    before = FeedbackActor(wall=lambda: NOW)
    before.configure(_settings(tmp_path))
    assert before.feedback("c0", "alice", 1, None, _settings(tmp_path))["status"] == "recorded"
    # Ray restarts the actor: a fresh object, never configured, whose first call carries the settings.
    after = FeedbackActor(wall=lambda: NOW)
    assert after.quality("tiny:bot.v2", since=NOW - 60) is None  # not read back yet: no counts, not (0, 0)
    assert after.feedback("c1", "alice", 5, "better", _settings(tmp_path)) == {"status": "recorded"}
    assert after.feedback("c2", "bob", 5, None, _settings(tmp_path)) == {"status": "not_found"}  # another key's
    assert after.quality("tiny:bot.v2", since=NOW - 60) == (2, 2)  # rating 1 (read back) and a correction
    assert after.quality("tiny:bot.v2", since=NOW + 60) == (0, 0)


def test_an_answer_of_another_replica_is_found_in_its_journal(tmp_path: Path) -> None:
    store = FeedbackActor(wall=lambda: NOW)
    store.configure(_settings(tmp_path))
    _journal(tmp_path, ("c-other", "alice", "tiny", "hello"))  # replica B wrote it; its hand-over is late
    assert store.feedback("c-other", "alice", 4, None, _settings(tmp_path)) == {"status": "recorded"}


def test_an_answer_evicted_from_memory_is_found_in_the_journals(tmp_path: Path) -> None:
    _journal(tmp_path, *[(f"c{i}", "alice", "tiny", "hello") for i in range(10)])
    store = FeedbackActor(wall=lambda: NOW)
    store.configure(_settings(tmp_path, max_entries=3))
    assert list(store.book.store.entries) == ["c7", "c8", "c9"]
    assert store.feedback("c0", "alice", 4, None, _settings(tmp_path, max_entries=3)) == {"status": "recorded"}


def test_old_journal_days_are_pruned(tmp_path: Path) -> None:
    files = DirectoryFiles(tmp_path)
    for day in (day_of(NOW - 10 * 86_400), day_of(NOW - 3 * 86_400), day_of(NOW)):
        files.write(day, f"answers/{day}/r.jsonl", b"{}\n", append=True)
    reader = JournalReader(files, wall=lambda: NOW)
    assert reader.prune(86_400) == 2
    assert files.folders("answers") == [day_of(NOW)]
    assert days_back(NOW, 86_400)[-1] == day_of(NOW) and len(days_back(NOW, 86_400)) == 2


def test_a_partly_written_line_is_read_once_it_is_whole(tmp_path: Path) -> None:
    files = DirectoryFiles(tmp_path)
    record = {"id": "c", "key": "k", "model": "m", "messages": _turns(), "answered_at": NOW}
    line = json.dumps(record).encode()
    day = day_of(NOW)
    files.write(day, f"answers/{day}/r.jsonl", line[:10], append=True)
    reader = JournalReader(files, wall=lambda: NOW)
    assert reader.read_new(60) == []
    files.write(day, f"answers/{day}/r.jsonl", line[10:] + b"\n", append=True)
    assert [r["id"] for r in reader.read_new(60)] == ["c"]
    assert reader.read_new(60) == []


class _Remote:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any) -> Any:
        self.calls.append(args)


class _Actor:
    def __init__(self) -> None:
        self.configure = _Remote()
        self.remember = _Remote()


def test_the_client_waits_for_the_journal_then_hands_the_answer_to_the_store(tmp_path: Path) -> None:
    actor = _Actor()
    client = FeedbackClient(FeedbackArgs(enabled=True, sink_path=str(tmp_path)), actor, redactor=_redact)
    asyncio.run(client.remember("c1", "alice", "tiny", [{"role": "user", "content": EMAIL}], "ok"))
    [(record, settings)] = actor.remember.calls
    assert record["messages"] == [{"role": "user", "content": "[EMAIL]"}, {"role": "assistant", "content": "ok"}]
    assert settings == client.settings
    assert (tmp_path / "answers").is_dir()
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the sink directory should be")
    broken = FeedbackClient(FeedbackArgs(enabled=True, sink_path=str(blocked)), _Actor(), redactor=_redact)
    asyncio.run(broken.remember("c2", "alice", "tiny", _turns(), "ok"))  # the answer still goes out
    assert broken.journal_failures == 1
