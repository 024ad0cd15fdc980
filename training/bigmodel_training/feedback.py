"""A training set from a BigModel's feedback sink (FineTuneJob `spec.dataset.fromFeedback`).

The serving ingress appends one chat-format JSON line per feedback to the sink
(`{"messages": [..., {"role": "assistant", ...}], "rating", "correction", "model", "key", "id", "ts"}`,
see bigmodel_serving.feedback). Building the dataset:

- the feedback records are read: `feedback-YYYY-MM-DD.jsonl` files (and, for an s3:// sink, the objects
  under `feedback-YYYY-MM-DD/`); the ingress's answer journals (`answers/`) and canary evidence
  (`canary/`) next to them are not training data;
- one example per completion id: the latest feedback on it wins (a user may change a rating);
- a frozen snapshot: only feedback given at or before `until` (the operator sets the FineTuneJob's
  creation time), so a retried or resumed job reads exactly the same rows whatever arrived since;
- kept when `ts >= since` and either corrected or rated at least `min_rating`. The rule: a correction
  is the answer the model should have given, so a corrected record is a positive example whatever
  its rating (a 1 with a correction is exactly the row to learn from); the rating filter applies to
  uncorrected answers only;
- the correction, when present, takes the assistant answer's place;
- every text is redacted again with the trainer's redactor (a sink written by hand or by an older
  ingress is cleaned too), whatever `privacy.redactPII` says;
- records that are not a trainable conversation (no answer, roles out of order) are skipped and counted.

No record matching is `NoFeedbackError` (reason NoMatchingFeedback), which the operator copies into
the FineTuneJob's Failed condition with the counts that explain it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bigmodel_training.config import DatasetSource, FeedbackFilter
from bigmodel_training.dataset import ROLES, read_lines
from bigmodel_training.errors import DatasetError, SourceError
from bigmodel_training.redact import redact_text

log = logging.getLogger(__name__)
REASON_NO_FEEDBACK = "NoMatchingFeedback"


class NoFeedbackError(DatasetError):
    """The feedback sink holds no record that matches the FineTuneJob's filter."""

    reason = REASON_NO_FEEDBACK


@dataclass
class FeedbackSelection:
    """What building the dataset found, for the log and the error message."""

    files: int = 0
    records: int = 0
    kept: int = 0
    corrected: int = 0
    below_rating: int = 0
    before_since: int = 0
    after_until: int = 0
    malformed: int = 0
    problems: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return (
            f"{self.files} file(s), {self.records} record(s): {self.kept} kept ({self.corrected} corrected), "
            f"{self.below_rating} below minRating (uncorrected), {self.before_since} before since, "
            f"{self.after_until} after the snapshot's end, {self.malformed} malformed"
        )


def parse_ts(value: Any) -> datetime | None:
    """An RFC 3339 time (a trailing Z allowed) or seconds since the epoch, as an aware UTC datetime."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _aware(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


def conversation(record: dict[str, Any]) -> tuple[list[dict[str, str]] | None, str]:
    """The record as a trainable conversation (correction in the answer's place), or (None, why)."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return None, "no messages"
    turns: list[dict[str, str]] = []
    for message in messages:
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            return None, "a message without a known role"
        content = message.get("content")
        if not isinstance(content, str):
            return None, "a message whose content is not a string"
        turns.append({"role": message["role"], "content": content})
    if turns[-1]["role"] != "assistant":
        return None, "the last message is not the assistant's answer"
    correction = record.get("correction")
    if isinstance(correction, str) and correction.strip():
        turns[-1]["content"] = correction
    if any(not turn["content"].strip() for turn in turns):
        return None, "an empty message (an empty answer needs a correction)"
    return [{"role": t["role"], "content": redact_text(t["content"])[0]} for t in turns], ""


def is_feedback_file(path: Path, directory: Path) -> bool:
    """A feedback record file: feedback-<day>.jsonl, or a record object under feedback-<day>/ (S3)."""
    parts = path.relative_to(directory).parts
    if parts[0] in ("answers", "canary"):  # the ingress's answer journals and canary evidence
        return False
    return any(part.startswith("feedback-") for part in parts)


def _records(directory: Path, max_line_bytes: int, found: FeedbackSelection) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for path in sorted(p for p in directory.rglob("*.jsonl") if p.is_file() and is_feedback_file(p, directory)):
        found.files += 1
        for number, raw in read_lines(path, max_line_bytes):
            if raw is None or not raw.strip():
                found.malformed += raw is None
                continue
            found.records += 1
            try:
                record = json.loads(raw)
            except ValueError:
                record = None
            if not isinstance(record, dict):
                found.malformed += 1
                found.problems.append(f"{path.name}:{number}: not a JSON object")
                continue
            out.append(record)
    return out


def select(records: list[dict[str, Any]], wanted: FeedbackFilter, found: FeedbackSelection) -> list[dict[str, Any]]:
    """The chat examples for `wanted`, one per completion id (its latest feedback)."""
    since = _aware(wanted.since)
    until = _aware(wanted.until)
    latest: dict[str, tuple[datetime, dict[str, Any]]] = {}
    for index, record in enumerate(records):
        ts = parse_ts(record.get("ts"))
        rating = record.get("rating")
        if ts is None or not isinstance(rating, int) or isinstance(rating, bool):
            found.malformed += 1
            found.problems.append(f"record {record.get('id', index)!r}: no valid ts or integer rating")
            continue
        if until is not None and ts > until:
            found.after_until += 1
            continue
        completion_id = str(record.get("id") or f"#{index}")
        if completion_id not in latest or latest[completion_id][0] <= ts:
            latest[completion_id] = (ts, record)
    examples = []
    for ts, record in latest.values():
        if since is not None and ts < since:
            found.before_since += 1
            continue
        corrected = isinstance(record.get("correction"), str) and bool(record["correction"].strip())
        if record["rating"] < wanted.min_rating and not corrected:
            found.below_rating += 1
            continue
        messages, why = conversation(record)
        if messages is None:
            found.malformed += 1
            found.problems.append(f"record {record.get('id')!r}: {why}")
            continue
        found.kept += 1
        found.corrected += bool(isinstance(record.get("correction"), str) and record["correction"].strip())
        examples.append({"messages": messages})
    return examples


def build_dataset(directory: Path, wanted: FeedbackFilter, target: Path, max_line_bytes: int) -> FeedbackSelection:
    """Write the selected examples to `target` (chat JSONL); NoFeedbackError when none match."""
    if not directory.is_dir():
        raise SourceError(f"feedback sink {directory} is not a directory (is the BigModel's sink mounted?)")
    found = FeedbackSelection()
    examples = select(_records(directory, max_line_bytes, found), wanted, found)
    for problem in found.problems[:20]:
        log.warning("feedback: skipped %s", problem)
    if not examples:
        since = f" given since {wanted.since.isoformat()}" if wanted.since else ""
        raise NoFeedbackError(
            f"no feedback records match (rating >= {wanted.min_rating}{since}) in {directory}: {found.describe()}"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "w", encoding="utf-8") as out:
        for example in examples:
            out.write(json.dumps(example, ensure_ascii=False) + "\n")
    log.info("feedback dataset: %s", found.describe())
    return found


def feedback_dataset(source: DatasetSource, directory: Path | None, scratch: Path) -> Path:
    """The chat JSONL built from the sink at `directory` (local) or `source.uri` (s3://)."""
    assert source.feedback is not None
    if directory is None:
        if not source.uri.startswith("s3://"):
            raise SourceError(f"feedback sink {source.uri}: expected pvc://, file:// or s3://")
        from bigmodel_training import storage

        directory = storage.download_prefix(source.uri, scratch / "feedback-sink", ["*.jsonl"])
    target = scratch / "feedback-dataset.jsonl"
    build_dataset(directory, source.feedback, target, source.max_line_bytes)
    return target
