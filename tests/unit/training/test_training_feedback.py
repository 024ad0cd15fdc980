"""The feedback dataset source: real sink files in, chat JSONL out (filtered, corrected, redacted)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from bigmodel_training import data, sources
from bigmodel_training.config import DatasetSource, FeedbackFilter
from bigmodel_training.errors import EXIT_DATASET, SourceError
from bigmodel_training.feedback import REASON_NO_FEEDBACK, NoFeedbackError, build_dataset, parse_ts

EMAIL = "jane.doe@example.com"


def _record(cid: str, rating: int, ts: str, *, answer: str = "An answer.", correction: str | None = None) -> dict:
    return {
        "messages": [
            {"role": "system", "content": "Support bot."},
            {"role": "user", "content": f"Question {cid} from {EMAIL}"},
            {"role": "assistant", "content": answer},
        ],
        "rating": rating,
        "correction": correction,
        "model": "tiny:support.ftj-1",
        "key": "alice",
        "id": cid,
        "ts": ts,
    }


def _sink(tmp_path: Path) -> Path:
    sink = tmp_path / "sink"
    (sink / "older").mkdir(parents=True)
    day1 = [
        _record("c1", 5, "2026-11-28T10:00:00.000Z"),
        _record("c2", 2, "2026-11-28T11:00:00.000Z"),
        _record("c3", 4, "2026-11-28T12:00:00.000Z", correction=f"Corrected: write to {EMAIL}"),
    ]
    day2 = [
        _record("c4", 5, "2026-11-30T09:00:00.000Z"),
        _record("c2", 5, "2026-11-30T09:30:00.000Z"),  # re-rated later: the latest feedback wins
        _record("c5", 5, "2026-11-30T10:00:00.000Z", answer=""),  # empty answer, no correction
        _record("c6", 5, "2026-11-30T10:30:00.000Z", answer="", correction="A real answer."),
    ]
    (sink / "older" / "feedback-2026-11-28.jsonl").write_text("".join(json.dumps(r) + "\n" for r in day1))
    lines = [json.dumps(r) for r in day2] + ["{not json", "", json.dumps({"id": "c7", "rating": "5", "ts": "x"})]
    (sink / "feedback-2026-11-30.jsonl").write_text("\n".join(lines) + "\n")
    (sink / "notes.txt").write_text("not a sink file")
    return sink


def _read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_are_filtered_corrected_and_redacted(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    found = build_dataset(_sink(tmp_path), FeedbackFilter(min_rating=4), target, 2**20)
    examples = _read(target)
    answers = {ex["messages"][1]["content"].split()[1]: ex["messages"][-1]["content"] for ex in examples}
    assert set(answers) == {"c1", "c2", "c3", "c4", "c6"}
    assert answers["c3"].startswith("Corrected: write to ") and "EMAIL" in answers["c3"]
    assert answers["c6"] == "A real answer."
    assert EMAIL not in target.read_text()
    assert all(set(ex) == {"messages"} for ex in examples)
    assert (found.files, found.kept, found.corrected) == (2, 5, 2)
    assert found.malformed == 3  # c5 (empty answer), the broken line, c7 (string rating, bad ts)


def test_since_and_min_rating_narrow_the_selection(tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    since = datetime(2026, 11, 29, tzinfo=UTC)
    found = build_dataset(_sink(tmp_path), FeedbackFilter(min_rating=5, since=since), target, 2**20)
    ids = sorted(ex["messages"][1]["content"].split()[1] for ex in _read(target))
    assert ids == ["c2", "c4", "c6"]
    assert found.before_since == 2  # c1, c3 (c2's older rating was replaced by its newer one)
    naive = FeedbackFilter(min_rating=5, since=datetime(2026, 11, 30, 9, 45))  # read as UTC
    build_dataset(_sink(tmp_path / "again"), naive, target, 2**20)
    assert len(_read(target)) == 1


def test_no_match_is_a_dataset_error_with_its_own_reason(tmp_path: Path) -> None:
    with pytest.raises(NoFeedbackError) as caught:
        build_dataset(_sink(tmp_path), FeedbackFilter(min_rating=5, since=datetime(2030, 1, 1)), tmp_path / "o", 2**20)
    assert caught.value.reason == REASON_NO_FEEDBACK == "NoMatchingFeedback"
    assert caught.value.exit_code == EXIT_DATASET
    message = str(caught.value)
    assert message.startswith("no feedback records match (rating >= 5 given since 2030-01-01")
    assert "before since" in message
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoFeedbackError, match="0 file"):
        build_dataset(empty, FeedbackFilter(), tmp_path / "o", 2**20)


def test_a_missing_sink_is_a_source_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not a directory"):
        build_dataset(tmp_path / "nope", FeedbackFilter(), tmp_path / "o", 2**20)


def test_the_dataset_source_resolves_to_a_valid_chat_file(tmp_path: Path) -> None:
    sink = _sink(tmp_path)
    source = DatasetSource(uri=sink.as_uri(), feedback=FeedbackFilter(min_rating=4), min_examples=5)
    path = sources.resolve_dataset_file(source, None, tmp_path / "scratch")
    result = data.load_and_validate(path, source.format, source.min_examples)
    assert len(result.examples) == 5
    mounted = DatasetSource(uri="pvc://claim/feedback/x", local_path=str(sink), feedback=FeedbackFilter())
    assert sources.resolve_dataset_file(mounted, None, tmp_path / "scratch2").is_file()


def test_feedback_sources_are_chat_only() -> None:
    with pytest.raises(ValidationError, match="format must be chat"):
        DatasetSource(uri="file:///sink", format="instruction", feedback=FeedbackFilter())
    with pytest.raises(ValidationError):
        FeedbackFilter(min_rating=6)


def test_timestamps() -> None:
    assert parse_ts("2026-11-30T10:00:00.000Z") == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert parse_ts("2026-11-30T10:00:00") == datetime(2026, 11, 30, 10, tzinfo=UTC)
    assert parse_ts(0) == datetime(1970, 1, 1, tzinfo=UTC)
    assert parse_ts(True) is None and parse_ts("yesterday") is None and parse_ts(None) is None


def test_corrections_count_whatever_the_rating_and_the_snapshot_ends_at_until(tmp_path: Path) -> None:
    sink = tmp_path / "sink"
    (sink / "answers" / "2026-11-30").mkdir(parents=True)
    (sink / "canary" / "bot").mkdir(parents=True)
    rows = [
        _record("low-corrected", 1, "2026-11-30T09:00:00.000Z", correction="The right answer."),
        _record("low", 1, "2026-11-30T09:10:00.000Z"),
        _record("late", 5, "2026-11-30T12:00:00.000Z"),
    ]
    (sink / "feedback-2026-11-30.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    journal = {"id": "x", "key": "k", "model": "m", "messages": [], "answered_at": 1.0}
    (sink / "answers" / "2026-11-30" / "r.jsonl").write_text(json.dumps(journal) + "\n")  # not training data
    (sink / "canary" / "bot" / "v2.jsonl").write_text("{}\n")
    until = datetime(2026, 11, 30, 11, tzinfo=UTC)
    target = tmp_path / "out.jsonl"
    found = build_dataset(sink, FeedbackFilter(min_rating=4, until=until), target, 2**20)
    [example] = _read(target)
    assert example["messages"][-1]["content"] == "The right answer."
    assert (found.files, found.kept, found.below_rating, found.after_until, found.malformed) == (1, 1, 1, 1, 0)
    again = tmp_path / "again.jsonl"
    (sink / "feedback-2026-11-30.jsonl").open("a").write(
        json.dumps(_record("new", 5, "2026-11-30T13:00:00.000Z")) + "\n"
    )
    build_dataset(sink, FeedbackFilter(min_rating=4, until=until), again, 2**20)
    assert again.read_bytes() == target.read_bytes()  # a retried job reads exactly the same rows
