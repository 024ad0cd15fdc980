"""The feedback store's state, pure: answered completions by id (a cache of the journals), the ratings
by served model, and the feedback record each rating becomes.

Entries arrive redacted (the ingress's journal redacted them before writing, feedback_journal.py); a
correction is redacted here, with the record. Single-threaded: the feedback actor serializes calls.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from bigmodel_serving.canary_rule import is_bad

Redactor = Callable[[str], str]
RATINGS_PER_MODEL = 100_000  # the most recent ratings of one model kept for the canary's counts


@dataclass
class Answered:
    """One remembered completion: the conversation ends with the assistant's answer (redacted)."""

    key: str
    model: str
    messages: list[dict[str, str]]
    answered_at: float  # wall clock (seconds since the epoch)
    size: int


def _size(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) + len(m["role"]) + 32 for m in messages) + 256


@dataclass
class CompletionStore:
    """Answered completions by id, oldest first; bounded by count, bytes and age (wall clock)."""

    ttl_s: float = 86_400.0
    max_entries: int = 50_000
    max_bytes: int = 128 * 2**20
    wall: Callable[[], float] = time.time
    entries: OrderedDict[str, Answered] = field(default_factory=OrderedDict)
    bytes: int = 0
    evicted: int = 0  # entries dropped for room before their time: the journals still have them

    def _drop(self, completion_id: str) -> None:
        entry = self.entries.pop(completion_id, None)
        if entry is not None:
            self.bytes -= entry.size

    def expire(self) -> None:
        horizon = self.wall() - self.ttl_s
        while self.entries:
            oldest_id, oldest = next(iter(self.entries.items()))
            if oldest.answered_at > horizon:
                break
            self._drop(oldest_id)

    def remember(
        self, completion_id: str, key: str, model: str, messages: list[dict[str, str]], answered_at: float
    ) -> None:
        if answered_at <= self.wall() - self.ttl_s:
            return
        self._drop(completion_id)
        entry = Answered(key, model, messages, answered_at, _size(messages))
        if entry.size > self.max_bytes:
            return  # larger than the whole cache: found in the journal when asked for
        self.entries[completion_id] = entry
        self.bytes += entry.size
        self.expire()
        while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)))
            self.evicted += 1

    def lookup(self, completion_id: str) -> Answered | None:
        """The entry whoever it was answered to (None: unknown here, or expired)."""
        self.expire()
        return self.entries.get(completion_id)


class FeedbackSink(Protocol):
    """Where feedback records go; `append` returns once the record is durable, raises OSError if not."""

    location: str

    def append(self, record: dict[str, Any]) -> None: ...


def iso_time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp()


@dataclass
class Rating:
    answered_at: float
    rating: int
    bad: bool


@dataclass
class FeedbackBook:
    """The cache, the ratings by model and the sink."""

    store: CompletionStore
    sink: FeedbackSink | None
    redact: Redactor
    wall: Callable[[], float] = time.time
    ratings: dict[str, OrderedDict[str, Rating]] = field(default_factory=dict)  # model -> completion id -> rating

    def remember(self, record: Mapping[str, Any]) -> None:
        """One journal record (feedback_journal.answer_record)."""
        self.store.remember(
            str(record["id"]), str(record["key"]), str(record["model"]), list(record["messages"]),
            float(record["answered_at"]),
        )  # fmt: skip

    def feedback(self, entry: Answered, completion_id: str, rating: int, correction: str | None) -> dict[str, Any]:
        """Append the record of a rating to the sink (durably) and count it; returns the record."""
        if self.sink is None:
            raise OSError("no sink configured")
        record = {
            "messages": entry.messages,
            "rating": rating,
            "correction": self.redact(correction) if correction else None,
            "model": entry.model,
            "key": entry.key,
            "id": completion_id,
            "ts": iso_time(self.wall()),
            "answered_at": iso_time(entry.answered_at),
        }
        self.sink.append(record)
        self.count(record)
        return record

    def count(self, record: Mapping[str, Any]) -> None:
        """Count a feedback record's rating for its model (the latest per completion id wins)."""
        model, rating, completion_id = record.get("model"), record.get("rating"), record.get("id")
        answered_at = parse_iso(record.get("answered_at"))
        if not isinstance(model, str) or not isinstance(completion_id, str) or answered_at is None:
            return
        if not isinstance(rating, int) or isinstance(rating, bool):
            return
        by_id = self.ratings.setdefault(model, OrderedDict())
        by_id.pop(completion_id, None)
        by_id[completion_id] = Rating(answered_at, rating, is_bad(rating, bool(record.get("correction"))))
        while len(by_id) > RATINGS_PER_MODEL:
            by_id.popitem(last=False)

    def quality(self, model: str, since: float) -> tuple[int, int]:
        """(rated, bad) of `model`'s answers given at or after `since` (the canary's start)."""
        rated = bad = 0
        for found in (self.ratings.get(model) or {}).values():
            if found.answered_at >= since:
                rated += 1
                bad += found.bad
        return rated, bad

    def scores(self, model: str) -> tuple[int, float]:
        """(feedback count, mean rating) of one served model name (0, 0.0 when none)."""
        found = list((self.ratings.get(model) or {}).values())
        return len(found), (sum(r.rating for r in found) / len(found) if found else 0.0)

    def all_scores(self) -> dict[str, tuple[int, float]]:
        return {model: self.scores(model) for model in sorted(self.ratings)}
