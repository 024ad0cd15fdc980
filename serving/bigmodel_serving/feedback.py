"""User feedback on answered completions: `POST /v1/feedback` and the chat-format JSONL sink.

    client ── POST /v1/chat/completions ──> ingress ── answer ──────────────────────────> client
                                              │ 1. journal: redacted, appended, fsync'd   ^ 2. the last byte
                                              v    (feedback_journal.py)                  │    (and the id)
                                     <sink>/answers/<day>/<replica>.jsonl ──────────────┘
                                              │ 3. into the store's cache (not awaited)
                                              v
                                     FeedbackActor (one detached Ray actor per application)
                                              ^ feedback(id, key, rating, correction, settings)
    client ── POST /v1/feedback ────────> ingress ── 200 {"id", "object": "feedback", "status": "recorded"}
                                              │
                                              v  one JSON line per feedback, PII redacted, fsync'd
                                     <sink>/feedback-YYYY-MM-DD.jsonl

- Sink first, memory as a cache: the ingress answers only after the completion (id, key name, the model
  version that answered, the redacted conversation) is durable in its journal. The store's memory
  holds the answers of `ttl_s` (at most `max_entries` and `max_bytes`); an answer it does not hold
  (a restarted store, another replica's answer not handed over yet, one evicted) is read from the
  journals. An id is known from the moment its answer is complete.
- Every store call carries the settings: a store that Ray restarted configures itself from the first
  call (reading the journals and the recent ratings back), so a restart costs a delay, never a 503.
- `rating` is an integer from 1 (bad) to 5 (good): a thumbs-down is 1, a thumbs-up 5. An unknown or
  expired id, and an id answered to another API key, are the same 404 (no key learns another's ids).
- A feedback record is written (and fsync'd, or PUT) before the 2xx. The sink is a small writer
  interface (`FeedbackSink`): a directory (a mounted PVC) or S3, through `SINK_SCHEMES`.
- Ratings by model (feedback_store.py) feed /metrics and the canary's quality signal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bigmodel_contract.safe_paths import PathEscapeError, resolve_inside
from bigmodel_serving.actor_calls import BACKGROUND_TIMEOUT_S, RETRY_AFTER_S, DependencyUnavailableError, call_actor
from bigmodel_serving.args import FeedbackArgs
from bigmodel_serving.errors import APIError
from bigmodel_serving.feedback_journal import AnswerJournal, JournalReader, sink_files
from bigmodel_serving.feedback_store import Answered, CompletionStore, FeedbackBook, FeedbackSink
from bigmodel_serving.head_placement import head_pinning

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
        fresh = not target.exists()
        with open(target, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())  # durable before the client hears "recorded"
        if fresh:
            descriptor = os.open(target.parent, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)


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
FULL_SEARCH_INTERVAL_S = 1.0  # at most one search of every journal per second (answers evicted from memory)
PRUNE_INTERVAL_S = 3600.0
RATINGS_WINDOW_S = 2 * 86_400  # ratings counted again from the sink after a restart: the last two days at least


class FeedbackActor:
    """The Ray actor holding one application's `FeedbackBook` (calls run one at a time, in order).

    Every call carries the ingress's feedback settings, so an actor that Ray restarted (detached,
    `max_restarts=-1`) configures itself from the first call that reaches it: it reads the journals
    of the retention window into its cache and counts the ratings of the last days again from the
    feedback records, then answers as before. Nothing it held is lost: the sink has it.
    """

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self.wall = wall
        self.args: FeedbackArgs | None = None
        self._settings: dict[str, Any] | None = None
        self.book = FeedbackBook(CompletionStore(wall=wall), None, lambda text: text, wall)
        self.reader: JournalReader | None = None
        self.problem: str | None = "feedback is not configured"
        self._searched_at = 0.0
        self._pruned_at = 0.0

    def configure(self, settings: dict[str, Any], redactor: Redactor | None = None) -> str | None:
        """Apply the ingress's `feedback` settings; returns why feedback cannot work, or None."""
        from bigmodel_serving.request_log import load_redactor

        if settings == self._settings:
            return self.problem
        args = FeedbackArgs.model_validate(settings)
        self._settings, self.args = settings, args
        store = self.book.store
        store.ttl_s, store.max_entries, store.max_bytes = args.ttl_s, args.max_entries, args.max_bytes
        redact, sink, problem, reader = redactor or load_redactor(), None, None, None
        if not args.enabled:
            problem = "feedback is not enabled for this model"
        elif redact is None:
            problem = "the PII redactor (bigmodel_training.redact) is not importable here"
        else:
            try:
                sink = open_sink(args)
                files = sink_files(args.sink_path, args.sink_uri)
                reader = JournalReader(files, self.wall) if files is not None else None
            except FeedbackSinkError as error:
                problem = str(error)
        if problem and args.enabled:
            logger.error("bigmodel feedback: %s", problem)
        self.book = FeedbackBook(store, sink, redact or (lambda text: text), self.wall, self.book.ratings)
        same_sink = (
            reader is not None and self.reader is not None and reader.files.location == self.reader.files.location
        )
        if same_sink:
            reader = self.reader  # settings of another replica (a rollout in progress): nothing to read again
        self.problem, self.reader = problem, reader
        if reader is not None and not same_sink:
            self._load(reader)
        return problem

    def _load(self, reader: JournalReader) -> None:
        """What the sink holds: the answers of the retention window, the ratings of the last days."""
        assert self.args is not None
        try:
            for record in reader.read_new(self.args.ttl_s):
                self.book.remember(record)
            for record in reader.feedback_records(max(self.args.ttl_s, RATINGS_WINDOW_S)):
                self.book.count(record)
        except Exception as error:  # the cache fills again as answers and look-ups come
            logger.warning("bigmodel feedback: could not read the sink %s: %r", reader.files.location, error)

    def _configured(self, settings: dict[str, Any] | None) -> str | None:
        if settings is not None and settings != self._settings:
            self.configure(settings)
        return self.problem

    def remember(self, record: dict[str, Any], settings: dict[str, Any] | None = None) -> None:
        """An answer the ingress already wrote to its journal (redacted): into the cache."""
        if self._configured(settings) is None:
            self.book.remember(record)
        self._prune()

    def feedback(
        self,
        completion_id: str,
        key: str,
        rating: int,
        correction: str | None,
        settings: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        if self._configured(settings) is not None:
            return {"status": UNAVAILABLE, "message": self.problem}
        try:
            entry = self._find(completion_id)
            if entry is None or entry.key != key:
                return {"status": NOT_FOUND}
            self.book.feedback(entry, completion_id, rating, correction)
        except (OSError, FeedbackSinkError) as error:
            logger.error("bigmodel feedback: could not write to %s: %s", self.args, error)
            return {"status": UNAVAILABLE, "message": f"the feedback sink could not be written ({error})"}
        return {"status": RECORDED}

    def _find(self, completion_id: str) -> Answered | None:
        """The cache, then what the journals got since the last look, then (rarely) every journal."""
        entry = self.book.store.lookup(completion_id)
        if entry is not None or self.reader is None or self.args is None:
            return entry
        for record in self.reader.read_new(self.args.ttl_s):
            self.book.remember(record)
        entry = self.book.store.lookup(completion_id)
        now = time.monotonic()
        if entry is None and self.book.store.evicted and now - self._searched_at >= FULL_SEARCH_INTERVAL_S:
            self._searched_at = now
            found = self.reader.find(completion_id, self.args.ttl_s)
            if found is not None and found["answered_at"] > self.wall() - self.args.ttl_s:
                return Answered(found["key"], found["model"], found["messages"], found["answered_at"], 0)
        return entry

    def _prune(self) -> None:
        """Journal days past the retention go (hourly)."""
        now = time.monotonic()
        if self.reader is None or self.args is None or now - self._pruned_at < PRUNE_INTERVAL_S:
            return
        self._pruned_at = now
        try:
            self.reader.prune(self.args.ttl_s + 86_400)
        except Exception as error:
            logger.warning("bigmodel feedback: could not prune old journals: %r", error)

    def quality(self, model: str, since: float) -> tuple[int, int] | None:
        """(rated, bad) of one served model's answers given since `since`, e.g. for a canary; None while a
        restarted store has not been configured by a call yet (it has not read the ratings back: a (0, 0)
        would wipe the canary's evidence until then)."""
        if self._settings is None:
            return None
        return self.book.quality(model, since)

    def scores(self, model: str) -> tuple[int, float]:
        """(count, mean rating) of feedback on one served model name, e.g. `tiny:support-bot.ftj-0427`."""
        return self.book.scores(model)

    def all_scores(self) -> dict[str, tuple[int, float]]:
        return self.book.all_scores()


def feedback_actor(app_name: str) -> Any:
    """The application's feedback actor, created on first use (detached: it outlives ingress replicas).

    Calls in flight when its process dies are retried on the restarted actor (`max_task_retries`); a
    rating may then be written twice, which changes nothing (the latest per completion id counts)."""
    import ray

    options = {"num_cpus": 0, "max_restarts": -1, "max_task_retries": -1, "max_concurrency": 1}
    remote_cls = cast(Any, ray.remote)(**options)(FeedbackActor)
    return remote_cls.options(
        name=actor_name(app_name),
        namespace=ACTOR_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        **head_pinning(),  # outlives worker pods that scale to zero
    ).remote()


JOURNAL_TIMEOUT_S = 5.0  # an answer waits this long at most for its journal write
STORE_TIMEOUT_S = 30.0  # a feedback waits this long at most for the store (a restart takes seconds)
NOT_FOUND_RETRIES_S = (0.05,)
"""Wait before asking again about an id the store does not know (see FeedbackClient.submit)."""


class FeedbackClient:
    """What an ingress replica holds: the journal of its answers, and POST /v1/feedback."""

    def __init__(self, args: FeedbackArgs, actor: Any, redactor: Redactor | None = None) -> None:
        from bigmodel_serving.request_log import load_redactor

        self.args = args
        self.settings = args.model_dump()
        self.actor = actor
        self.journal: AnswerJournal | None = None
        self.journal_failures = 0
        redact = redactor or load_redactor()
        files = sink_files(args.sink_path, args.sink_uri) if args.enabled else None
        if files is not None and redact is not None:
            self.journal = AnswerJournal(files, redact)
        actor.configure.remote(self.settings)

    async def remember(
        self, completion_id: str | None, key: str, model: str, conversation: list[dict[str, str]] | None, answer: str
    ) -> None:
        """Write one answered completion to this replica's journal and wait until it is durable (at most
        JOURNAL_TIMEOUT_S), then give it to the store's cache without waiting."""
        if not completion_id or conversation is None or self.journal is None:
            return
        messages = [*conversation, {"role": "assistant", "content": answer}]
        try:
            record = await asyncio.wait_for(
                asyncio.shield(self.journal.append(completion_id, key, model, messages)), JOURNAL_TIMEOUT_S
            )
        except Exception as error:  # the answer goes out anyway; a feedback on it may find nothing
            self.journal_failures += 1
            logger.error("bigmodel feedback: answer %s not journaled: %r", completion_id, error)
            return
        try:
            self.actor.remember.remote(record, self.settings)
        except Exception:  # the store finds it in the journal
            logger.warning("bigmodel feedback: could not hand %s to the store", completion_id)

    async def submit(self, key: str, raw: bytes) -> dict[str, Any]:
        """Validate and record one feedback; raises APIError 400/404/503."""
        request = parse_feedback_request(raw)
        for delay in (*NOT_FOUND_RETRIES_S, None):
            try:
                pending = self.actor.feedback.remote(request.id, key, request.rating, request.correction, self.settings)
                result = await call_actor("feedback store", pending, STORE_TIMEOUT_S)
            except DependencyUnavailableError as error:  # gone for longer than a restart takes
                logger.warning("bigmodel feedback: the feedback store did not answer: %r", error.underlying)
                raise feedback_unavailable("the feedback store did not answer; retry shortly") from None
            if result["status"] != NOT_FOUND or delay is None:
                break
            await asyncio.sleep(delay)
        if result["status"] == NOT_FOUND:
            raise feedback_not_found(request.id)
        if result["status"] != RECORDED:
            raise feedback_unavailable(str(result.get("message")))
        return {"id": request.id, "object": "feedback", "status": "recorded"}

    async def metrics_text(self) -> str:
        """The feedback families; raises DependencyUnavailableError (/metrics goes on without them)."""
        scores = await call_actor("feedback store", self.actor.all_scores.remote(), BACKGROUND_TIMEOUT_S)
        return render_feedback_metrics(scores) + (
            "# HELP bigmodel_feedback_journal_failures_total Answers this replica could not journal for feedback.\n"
            "# TYPE bigmodel_feedback_journal_failures_total counter\n"
            f"bigmodel_feedback_journal_failures_total {self.journal_failures}\n"
        )
