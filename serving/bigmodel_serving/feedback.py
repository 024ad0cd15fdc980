"""User feedback on answered completions: `POST /v1/feedback` and the chat-format JSONL sink.

    client ── POST /v1/chat/completions ──> ingress ── answer ──> client
                                              │ remember(id, key, model, conversation)   (not awaited)
                                              v
                                     FeedbackActor (one detached Ray actor per application)
                                              ^ feedback(id, key, rating, correction)
    client ── POST /v1/feedback ────────> ingress ── 200 {"id", "object": "feedback", "status": "recorded"}
                                              │
                                              v  one JSON line per feedback, PII redacted
                                     <sink_path>/feedback-YYYY-MM-DD.jsonl

- The ingress sends every answered completion (streamed or not) to the actor without waiting: the id
  from the response (`chatcmpl-…`, `cmpl-…`), the key's name, the model actually served (an adapter
  version included) and the conversation with the answer last. The actor keeps them for `ttl_s`,
  at most `max_entries` and `max_bytes` (oldest dropped first).
- PII redaction (the request log's redactor) runs in a thread of the actor, off the request path, a
  moment after an answer arrives; a feedback for an answer not yet redacted redacts it first. What
  reaches the sink is always redacted, the correction included.
- `rating` is an integer from 1 (bad) to 5 (good): a thumbs-down is 1, a thumbs-up 5. An unknown or
  expired id, and an id answered to another API key, are the same 404 (no key learns another's ids).
- The sink is a small writer interface (`FeedbackSink`): a directory (a mounted PVC) now; object
  stores plug in through `SINK_SCHEMES`.
- Per-model counts and mean ratings (`scores`) feed /metrics and the canary's feedback signal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, cast
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bigmodel_contract.safe_paths import PathEscapeError, resolve_inside
from bigmodel_serving.actor_calls import BACKGROUND_TIMEOUT_S, RETRY_AFTER_S, DependencyUnavailableError, call_actor
from bigmodel_serving.args import FeedbackArgs
from bigmodel_serving.errors import APIError

logger = logging.getLogger(__name__)

ACTOR_NAMESPACE = "bigmodel"
RATING_MIN, RATING_MAX = 1, 5
MAX_CORRECTION_CHARS = 65_536
CHAT_ROLES = ("system", "user", "assistant")
Redactor = Callable[[str], str]


def actor_name(app_name: str) -> str:
    return f"bigmodel-feedback:{app_name}"


class FeedbackRequest(BaseModel):
    """The body of POST /v1/feedback (strict: a rating of "5", 5.0 or true is a 400)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    id: str = Field(min_length=1, max_length=256, description="The completion's id, e.g. chatcmpl-…")
    rating: int = Field(ge=RATING_MIN, le=RATING_MAX, description="1 (bad) … 5 (good).")
    correction: str | None = Field(default=None, max_length=MAX_CORRECTION_CHARS)


def parse_feedback_request(raw: bytes) -> FeedbackRequest:
    """The validated body; any defect is a 400 naming the field."""
    try:
        data = json.loads(raw or b"null")
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        raise APIError(400, "The body must be a JSON object.", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, 'The body must be a JSON object: {"id", "rating", "correction"?}.')
    try:
        return FeedbackRequest.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        return_hint = f" (rating is an integer from {RATING_MIN} to {RATING_MAX})" if param == "rating" else ""
        raise APIError(400, f"{first['msg']} (at {param or 'body'}){return_hint}", param=param) from None


def feedback_not_found(completion_id: str) -> APIError:
    return APIError(
        404,
        f"No answered completion `{completion_id[:256]}` to attach feedback to: the id is unknown, expired, "
        "or was answered to another API key.",
        code="completion_not_found",
        param="id",
    )


def feedback_disabled() -> APIError:
    return APIError(
        404,
        "Feedback is not enabled for this model (BigModel spec.feedback.enabled).",
        code="feedback_disabled",
    )


def feedback_unavailable(reason: str) -> APIError:
    return APIError(
        503,
        f"Feedback is not available: {reason}",
        code="feedback_unavailable",
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


# --------------------------------------------------------------------------------------------
# what the ingress captures
# --------------------------------------------------------------------------------------------


def text_of(content: Any) -> str | None:
    """A message's text: the string, or the text parts of a content-part list joined; else None."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [part.get("text") for part in content if isinstance(part, dict) and part.get("type") == "text"]
        return "".join(text for text in texts if isinstance(text, str))
    return None


def conversation_of(messages: Iterable[Any] | None = None, prompt: Any = None) -> list[dict[str, str]] | None:
    """The request as chat turns (system/user/assistant text only); None when there is nothing to keep.

    A completions prompt becomes one user turn; token-id prompts and batches of prompts are not kept
    (an answer could not be matched to its prompt).
    """
    if messages is not None:
        turns = []
        for message in messages:
            if not isinstance(message, Mapping) or message.get("role") not in CHAT_ROLES:
                continue
            text = text_of(message.get("content"))
            if text:
                turns.append({"role": str(message["role"]), "content": text})
        return turns or None
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) and prompt else None


# --------------------------------------------------------------------------------------------
# the store (pure) and the sink
# --------------------------------------------------------------------------------------------


@dataclass
class Answered:
    """One remembered completion: the conversation ends with the assistant's answer."""

    key: str
    model: str
    messages: list[dict[str, str]]
    answered_at: float  # wall clock (seconds since the epoch)
    expires: float  # store clock
    size: int
    redacted: bool = False


def _size(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) + len(m["role"]) + 32 for m in messages) + 256


@dataclass
class CompletionStore:
    """Answered completions by id, oldest first; bounded by count, bytes and age."""

    ttl_s: float = 86_400.0
    max_entries: int = 50_000
    max_bytes: int = 128 * 2**20
    clock: Callable[[], float] = time.monotonic
    entries: OrderedDict[str, Answered] = field(default_factory=OrderedDict)
    bytes: int = 0
    pending: deque[str] = field(default_factory=deque)  # ids not redacted yet, oldest first

    def _drop(self, completion_id: str) -> None:
        entry = self.entries.pop(completion_id, None)
        if entry is not None:
            self.bytes -= entry.size

    def expire(self) -> None:
        now = self.clock()
        while self.entries:
            oldest_id, oldest = next(iter(self.entries.items()))
            if oldest.expires > now:
                break
            self._drop(oldest_id)

    def remember(self, completion_id: str, key: str, model: str, messages: list[dict[str, str]], at: float) -> None:
        self._drop(completion_id)
        entry = Answered(key, model, messages, at, self.clock() + self.ttl_s, _size(messages))
        if entry.size > self.max_bytes:
            return  # larger than the whole store: never kept
        self.entries[completion_id] = entry
        self.bytes += entry.size
        self.pending.append(completion_id)
        self.expire()
        while len(self.entries) > self.max_entries or self.bytes > self.max_bytes:
            self._drop(next(iter(self.entries)))

    def get(self, completion_id: str, key: str) -> Answered | None:
        """The entry answered to `key`, or None (unknown, expired, or another key's)."""
        self.expire()
        entry = self.entries.get(completion_id)
        return entry if entry is not None and entry.key == key else None

    def unredacted(self, limit: int) -> list[Answered]:
        """Up to `limit` entries still to redact, oldest first (each handed out once)."""
        out: list[Answered] = []
        while self.pending and len(out) < limit:
            entry = self.entries.get(self.pending.popleft())
            if entry is not None and not entry.redacted:
                out.append(entry)
        return out


class FeedbackSink(Protocol):
    """Where feedback records go; `append` raises OSError when the record could not be stored."""

    location: str

    def append(self, record: dict[str, Any]) -> None: ...


class DirectorySink:
    """One JSONL file per UTC day in a directory (a mounted PVC): feedback-YYYY-MM-DD.jsonl.

    With `root` (the claim's mount) every write is resolved inside it first: a symlink someone put on
    the volume (the directory, or a day's file) cannot make the ingress append somewhere else."""

    def __init__(self, directory: Path, root: Path | None = None) -> None:
        self.directory = directory
        self.root = root
        self.location = str(directory)

    def append(self, record: dict[str, Any]) -> None:
        day = datetime.now(UTC).strftime("%Y-%m-%d")
        name = f"feedback-{day}.jsonl"
        line = json.dumps(record, ensure_ascii=False) + "\n"
        if self.root is None:
            self.directory.mkdir(parents=True, exist_ok=True)
            target = self.directory / name
        else:
            relative = os.path.relpath(self.directory, self.root)
            try:
                resolve_inside(self.root, relative).mkdir(parents=True, exist_ok=True)
                target = resolve_inside(self.root, f"{relative}/{name}")
            except PathEscapeError as exc:
                raise FeedbackSinkError(f"feedback sink {self.location}: {exc}") from exc
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(line)


class FeedbackSinkError(ValueError):
    """The configured sink cannot be used (unsupported scheme, bad path)."""


def _directory_sink(uri: str) -> FeedbackSink:
    return DirectorySink(Path(unquote(urlparse(uri).path)))


def _s3_sink(uri: str) -> FeedbackSink:
    from bigmodel_serving.storage import S3Sink, StorageError

    try:
        return S3Sink(uri)
    except StorageError as exc:
        raise FeedbackSinkError(str(exc)) from exc


# Writers by URI scheme (each a function of the URI).
SINK_SCHEMES: dict[str, Callable[[str], FeedbackSink]] = {"file": _directory_sink, "s3": _s3_sink}


def open_sink(args: FeedbackArgs) -> FeedbackSink:
    """The writer for `args.sink_path` or `args.sink_uri`; FeedbackSinkError says why not."""
    if args.sink_path:
        return DirectorySink(Path(args.sink_path), Path(args.sink_root) if args.sink_root else None)
    uri = args.sink_uri or ""
    scheme = urlparse(uri).scheme
    opener = SINK_SCHEMES.get(scheme)
    if opener is None:
        raise FeedbackSinkError(
            f"feedback sink {uri!r}: {scheme}:// sinks are not supported by this build "
            f"(supported: {', '.join(sorted(SINK_SCHEMES))}); use sink_path, a mounted PVC"
        )
    return opener(uri)


def iso_time(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class FeedbackBook:
    """The store, the per-model scores and the sink (single-threaded but for `redact_some`)."""

    store: CompletionStore
    sink: FeedbackSink | None
    redact: Redactor
    wall: Callable[[], float] = time.time
    scores_by_model: dict[str, list[float]] = field(default_factory=dict)  # model -> [count, sum]

    def remember(self, completion_id: str, key: str, model: str, messages: list[dict[str, str]]) -> None:
        self.store.remember(completion_id, key, model, messages, self.wall())

    def redacted_messages(self, entry: Answered) -> list[dict[str, str]]:
        return [{"role": m["role"], "content": self.redact(m["content"])} for m in entry.messages]

    def redact_entry(self, entry: Answered) -> None:
        if not entry.redacted:
            entry.messages, entry.redacted = self.redacted_messages(entry), True

    def feedback(self, completion_id: str, key: str, rating: int, correction: str | None) -> dict[str, Any] | None:
        """Append the record to the sink and return it; None for an unknown id (or another key's)."""
        entry = self.store.get(completion_id, key)
        if entry is None:
            return None
        if self.sink is None:
            raise FeedbackSinkError("no sink configured")
        self.redact_entry(entry)
        record = {
            "messages": entry.messages,
            "rating": rating,
            "correction": self.redact(correction) if correction else None,
            "model": entry.model,
            "key": key,
            "id": completion_id,
            "ts": iso_time(self.wall()),
            "answered_at": iso_time(entry.answered_at),
        }
        self.sink.append(record)
        count_sum = self.scores_by_model.setdefault(entry.model, [0, 0.0])
        count_sum[0] += 1
        count_sum[1] += rating
        return record

    def scores(self, model: str) -> tuple[int, float]:
        """(feedback count, mean rating) of one served model name (0, 0.0 when none)."""
        count, total = self.scores_by_model.get(model, [0, 0.0])
        return int(count), (total / count if count else 0.0)

    def all_scores(self) -> dict[str, tuple[int, float]]:
        return {model: self.scores(model) for model in sorted(self.scores_by_model)}


def render_feedback_metrics(scores: Mapping[str, tuple[int, float]]) -> str:
    """Feedback counts and mean ratings by served model (adapter version included), Prometheus text."""
    from bigmodel_serving.metrics import _labels, _number

    out = [
        "# HELP bigmodel_feedback_total Feedback records stored, by served model (adapter version included).",
        "# TYPE bigmodel_feedback_total counter",
        *(f"bigmodel_feedback_total{_labels({'model': m})} {count}" for m, (count, _) in sorted(scores.items())),
        f"# HELP bigmodel_feedback_rating_mean Mean feedback rating ({RATING_MIN}..{RATING_MAX}), by served model.",
        "# TYPE bigmodel_feedback_rating_mean gauge",
        *(
            f"bigmodel_feedback_rating_mean{_labels({'model': m})} {_number(mean)}"
            for m, (_, mean) in sorted(scores.items())
        ),
    ]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# the actor (one per application) and the ingress's client
# --------------------------------------------------------------------------------------------

RECORDED, NOT_FOUND, UNAVAILABLE = "recorded", "not_found", "unavailable"


class FeedbackActor:
    """The Ray actor holding one application's `FeedbackBook` (calls run one at a time, in order).

    A daemon thread redacts remembered answers shortly after they arrive, so the request path never
    pays for redaction and a feedback usually finds its answer redacted already.
    """

    REDACT_BATCH = 32

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.args: FeedbackArgs | None = None
        self.book = FeedbackBook(CompletionStore(clock=clock), None, lambda text: text)
        self.problem: str | None = "feedback is not configured"
        threading.Thread(target=self._redact_loop, name="feedback-redactor", daemon=True).start()

    def configure(self, settings: dict[str, Any], redactor: Redactor | None = None) -> str | None:
        """Apply the ingress's `feedback` settings; returns why feedback cannot work, or None."""
        from bigmodel_serving.request_log import load_redactor

        args = FeedbackArgs.model_validate(settings)
        with self._lock:
            if args == self.args:
                return self.problem
            self.args = args
            store = self.book.store
            store.ttl_s, store.max_entries, store.max_bytes = args.ttl_s, args.max_entries, args.max_bytes
            redact, sink, problem = redactor or load_redactor(), None, None
            if not args.enabled:
                problem = "feedback is not enabled for this model"
            elif redact is None:
                problem = "the PII redactor (bigmodel_training.redact) is not importable here"
            else:
                try:
                    sink = open_sink(args)
                except FeedbackSinkError as error:
                    problem = str(error)
            if problem and args.enabled:
                logger.error("bigmodel feedback: %s", problem)
            self.book = FeedbackBook(
                store, sink, redact or (lambda text: text), self.book.wall, self.book.scores_by_model
            )
            self.problem = problem
            return problem

    def remember(self, completion_id: str, key: str, model: str, messages: list[dict[str, str]]) -> None:
        with self._lock:
            if self.problem is None:
                self.book.remember(completion_id, key, model, messages)
        self._wake.set()

    def feedback(self, completion_id: str, key: str, rating: int, correction: str | None) -> dict[str, Any]:
        with self._lock:
            if self.problem is not None:
                return {"status": UNAVAILABLE, "message": self.problem}
            try:
                record = self.book.feedback(completion_id, key, rating, correction)
            except (OSError, FeedbackSinkError) as error:
                logger.error("bigmodel feedback: could not write to %s: %s", self.args, error)
                return {"status": UNAVAILABLE, "message": f"the feedback sink could not be written ({error})"}
        return {"status": RECORDED if record is not None else NOT_FOUND}

    def scores(self, model: str) -> tuple[int, float]:
        """(count, mean rating) of feedback on one served model name, e.g. `tiny:support-bot.ftj-0427`."""
        with self._lock:
            return self.book.scores(model)

    def all_scores(self) -> dict[str, tuple[int, float]]:
        with self._lock:
            return self.book.all_scores()

    def redact_pending(self) -> int:
        """Redact the answers waiting for it; returns how many were redacted."""
        done = 0
        while True:
            with self._lock:
                batch, book = self.book.store.unredacted(self.REDACT_BATCH), self.book
            if not batch:
                return done
            for entry in batch:
                cleaned = book.redacted_messages(entry)  # outside the lock: feedback calls go on meanwhile
                with self._lock:
                    if not entry.redacted:
                        entry.messages, entry.redacted = cleaned, True
                done += 1

    def _redact_loop(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            try:
                self.redact_pending()
            except Exception:  # never let the thread die; a feedback redacts its own entry anyway
                logger.exception("bigmodel feedback: redaction failed")


def feedback_actor(app_name: str) -> Any:
    """The application's feedback actor, created on first use (detached: it outlives ingress replicas)."""
    import ray

    remote_cls = cast(Any, ray.remote)(num_cpus=0, max_restarts=-1, max_concurrency=1)(FeedbackActor)
    return remote_cls.options(
        name=actor_name(app_name), namespace=ACTOR_NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote()


NOT_FOUND_RETRIES_S = (0.05, 0.2)
"""Waits before asking again about an id the store does not know (see FeedbackClient.submit)."""


class FeedbackClient:
    """What an ingress replica holds: sends answers to the actor, answers POST /v1/feedback."""

    def __init__(self, args: FeedbackArgs, actor: Any) -> None:
        self.args = args
        self.actor = actor
        actor.configure.remote(args.model_dump())

    def remember(
        self, completion_id: str | None, key: str, model: str, conversation: list[dict[str, str]] | None, answer: str
    ) -> None:
        """Send one answered completion to the actor without waiting (best effort)."""
        if not completion_id or conversation is None:
            return
        try:
            messages = [*conversation, {"role": "assistant", "content": answer}]
            self.actor.remember.remote(completion_id, key, model, messages)
        except Exception:  # the answer already went out; feedback on it will get 404
            logger.exception("bigmodel feedback: could not remember %s", completion_id)

    async def submit(self, key: str, raw: bytes) -> dict[str, Any]:
        """Validate and record one feedback; raises APIError 400/404/503."""
        request = parse_feedback_request(raw)
        for delay in (*NOT_FOUND_RETRIES_S, None):
            try:
                pending = self.actor.feedback.remote(request.id, key, request.rating, request.correction)
                result = await call_actor("feedback store", pending)
            except DependencyUnavailableError as error:  # restarting (it keeps no answers across a restart)
                logger.warning("bigmodel feedback: the feedback actor did not answer: %r", error.underlying)
                raise feedback_unavailable("the feedback store did not answer; retry shortly") from None
            if result["status"] != NOT_FOUND or delay is None:
                break
            # Another ingress replica may have answered that completion a moment ago: Ray orders only
            # one caller's calls, so its `remember` can reach the actor after this feedback.
            await asyncio.sleep(delay)
        if result["status"] == NOT_FOUND:
            raise feedback_not_found(request.id)
        if result["status"] != RECORDED:
            raise feedback_unavailable(str(result.get("message")))
        return {"id": request.id, "object": "feedback", "status": "recorded"}

    async def metrics_text(self) -> str:
        """The feedback families; raises DependencyUnavailableError (/metrics goes on without them)."""
        scores = await call_actor("feedback store", self.actor.all_scores.remote(), BACKGROUND_TIMEOUT_S)
        return render_feedback_metrics(scores)
