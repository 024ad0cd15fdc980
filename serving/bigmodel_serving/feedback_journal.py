"""Answered completions on the feedback sink, written before the answer's last byte goes out.

Sink first, memory as a cache: every ingress replica appends each answer eligible for feedback
(its id, the key's name, the model version that answered, the redacted conversation) to its own
journal on the sink and waits until it is durable; only then the client gets the end of the answer
(and with it the id it may rate). The feedback store's memory is a cache in front of the journals: a
restarted store, a feedback arriving through another ingress replica, or one for an answer evicted
from memory, is found in the journals.

    <sink>/answers/<YYYY-MM-DD>/<replica>.jsonl                      a directory sink: appended, fsync'd
    s3://<bucket>/<prefix>/answers/<YYYY-MM-DD>/<replica>-<n>.jsonl  an S3 sink: one PUT per batch

`AnswerJournal` batches (group commit): the answers that arrive while one batch is written go into
the next, with one fsync (or one PUT) each. Redaction happens in its thread before anything is written:
the sink never holds an unredacted conversation. The feedback store deletes journal days older than
the retention (`prune`). Feedback records themselves are `feedback-YYYY-MM-DD.jsonl` next to them
(feedback.py); the trainer reads only those.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

ANSWERS = "answers"
FEEDBACK_PREFIX = "feedback-"
Redactor = Callable[[str], str]


def day_of(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%d")


def days_back(wall: float, seconds: float) -> list[str]:
    """The UTC days from `seconds` before `wall` up to `wall`'s day, oldest first."""
    first = datetime.fromtimestamp(wall - seconds, UTC).date()
    last = datetime.fromtimestamp(wall, UTC).date()
    return [(first + timedelta(days=n)).isoformat() for n in range((last - first).days + 1)]


def answer_record(
    completion_id: str, key: str, model: str, messages: list[dict[str, str]], answered_at: float
) -> dict[str, Any]:
    return {"id": completion_id, "key": key, "model": model, "messages": messages, "answered_at": answered_at}


def is_answer_record(record: Any) -> bool:
    return (
        isinstance(record, dict)
        and isinstance(record.get("id"), str)
        and isinstance(record.get("key"), str)
        and isinstance(record.get("model"), str)
        and isinstance(record.get("messages"), list)
        and isinstance(record.get("answered_at"), int | float)
    )


# --------------------------------------------------------------------------------------------
# where journals and feedback records live: a directory or an S3 prefix
# --------------------------------------------------------------------------------------------


class SinkFiles(Protocol):
    """The sink as files: write a batch durably, list and read what is there, delete old days."""

    location: str

    def write(self, day: str, name: str, data: bytes, append: bool) -> None: ...

    def listing(self, folder: str) -> list[tuple[str, int]]: ...  # (relative name, size) in a folder ("": the top)

    def read(self, name: str, offset: int) -> bytes: ...

    def delete_folder(self, folder: str) -> None: ...

    def folders(self, under: str) -> list[str]: ...


class DirectoryFiles:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.location = str(directory)

    def write(self, day: str, name: str, data: bytes, append: bool) -> None:
        path = self.directory / name
        fresh = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab" if append else "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if fresh:  # the new directory entry must survive a crash too
            descriptor = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)

    def listing(self, folder: str) -> list[tuple[str, int]]:
        root = self.directory / folder if folder else self.directory
        if not root.is_dir():
            return []
        prefix = f"{folder}/" if folder else ""
        return sorted((f"{prefix}{p.name}", p.stat().st_size) for p in root.iterdir() if p.is_file())

    def read(self, name: str, offset: int) -> bytes:
        with open(self.directory / name, "rb") as handle:
            handle.seek(offset)
            return handle.read()

    def delete_folder(self, folder: str) -> None:
        shutil.rmtree(self.directory / folder, ignore_errors=True)

    def folders(self, under: str) -> list[str]:
        root = self.directory / under
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


class S3Files:
    def __init__(self, uri: str) -> None:
        from bigmodel_serving.storage import split_uri

        self.bucket, key = split_uri(uri)
        self.prefix = key.strip("/")
        self.location = uri

    def _key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    def write(self, day: str, name: str, data: bytes, append: bool) -> None:
        from bigmodel_serving.storage import client

        if append:  # objects cannot grow: each batch is an object of its own
            stem = name.removesuffix(".jsonl")
            name = f"{stem}-{time.time_ns()}-{secrets.token_hex(3)}.jsonl"
        client().put_object(Bucket=self.bucket, Key=self._key(name), Body=data, ContentType="application/x-ndjson")

    def listing(self, folder: str) -> list[tuple[str, int]]:
        from bigmodel_serving.storage import client

        prefix = self._key(folder) + "/" if folder else (f"{self.prefix}/" if self.prefix else "")
        found = []
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        for page in pages:
            for obj in page.get("Contents", []):
                name = obj["Key"][len(prefix) :]
                found.append((f"{folder}/{name}" if folder else name, int(obj["Size"])))
        return sorted(found)

    def read(self, name: str, offset: int) -> bytes:
        from bigmodel_serving.storage import client

        body: bytes = client().get_object(Bucket=self.bucket, Key=self._key(name))["Body"].read()
        return body[offset:]

    def delete_folder(self, folder: str) -> None:
        from bigmodel_serving.storage import client

        s3 = client()
        for name, _ in self.listing(folder):
            s3.delete_object(Bucket=self.bucket, Key=self._key(name))

    def folders(self, under: str) -> list[str]:
        from bigmodel_serving.storage import client

        prefix = self._key(under) + "/"
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix, Delimiter="/")
        return sorted(p["Prefix"][len(prefix) :].rstrip("/") for page in pages for p in page.get("CommonPrefixes", []))


# --------------------------------------------------------------------------------------------
# the writer (one per ingress replica)
# --------------------------------------------------------------------------------------------


class AnswerJournal:
    """Appends answers to this replica's journal; `append` returns once the answer is durable."""

    def __init__(self, files: SinkFiles, redact: Redactor, wall: Callable[[], float] = time.time) -> None:
        self.files = files
        self.redact = redact
        self.wall = wall
        self.replica = f"{os.getpid()}-{secrets.token_hex(4)}"
        self._queue: list[tuple[dict[str, Any], asyncio.AbstractEventLoop, asyncio.Future[dict[str, Any]]]] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self.batches = 0
        threading.Thread(target=self._run, name="answer-journal", daemon=True).start()

    def append(
        self, completion_id: str, key: str, model: str, messages: list[dict[str, str]]
    ) -> asyncio.Future[dict[str, Any]]:
        """A future that resolves to the written (redacted) record, or fails with the OSError."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[dict[str, Any]] = loop.create_future()
        record = answer_record(completion_id, key, model, messages, self.wall())
        with self._lock:
            self._queue.append((record, loop, future))
        self._wake.set()
        return future

    def _run(self) -> None:
        while True:
            self._wake.wait()
            self._wake.clear()
            with self._lock:
                batch, self._queue = self._queue, []
            if not batch:
                continue
            error: BaseException | None = None
            records = []
            try:
                for record, _, _ in batch:
                    record["messages"] = [
                        {"role": m["role"], "content": self.redact(m["content"])} for m in record["messages"]
                    ]
                    records.append(record)
                day = day_of(records[0]["answered_at"])
                data = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)
                self.files.write(day, f"{ANSWERS}/{day}/{self.replica}.jsonl", data, append=True)
                self.batches += 1
            except Exception as exc:  # every waiting answer learns it; the ingress logs and answers anyway
                error = exc
            for record, loop, future in batch:
                if error is None:
                    loop.call_soon_threadsafe(_resolve, future, record, None)
                else:
                    loop.call_soon_threadsafe(_resolve, future, None, error)


def _resolve(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(value)


# --------------------------------------------------------------------------------------------
# the reader (the feedback store): follows every replica's journal, reads the feedback records
# --------------------------------------------------------------------------------------------


class JournalReader:
    """Reads what the replicas appended since the last look (per file: the offset read up to)."""

    def __init__(self, files: SinkFiles, wall: Callable[[], float] = time.time) -> None:
        self.files = files
        self.wall = wall
        self.offsets: dict[str, int] = {}

    def read_new(self, window_s: float) -> list[dict[str, Any]]:
        """Answer records appended since the last call, over the days of the last `window_s` seconds."""
        out: list[dict[str, Any]] = []
        for day in days_back(self.wall(), window_s):
            for name, size in self.files.listing(f"{ANSWERS}/{day}"):
                start = self.offsets.get(name, 0)
                if size <= start:
                    continue
                data = self.files.read(name, start)
                end = data.rfind(b"\n") + 1  # a line still being written is read next time
                self.offsets[name] = start + end
                out += [r for r in _records(data[:end]) if is_answer_record(r)]
        return out

    def find(self, completion_id: str, window_s: float) -> dict[str, Any] | None:
        """Every journal of the window searched for one id (answers evicted from the store's memory)."""
        needle = json.dumps(completion_id).encode()
        for day in reversed(days_back(self.wall(), window_s)):
            for name, _ in self.files.listing(f"{ANSWERS}/{day}"):
                data = self.files.read(name, 0)
                if needle not in data:
                    continue
                for record in _records(data):
                    if is_answer_record(record) and record["id"] == completion_id:
                        return record
        return None

    def prune(self, keep_s: float) -> int:
        """Delete journal days older than `keep_s`; returns how many."""
        keep = set(days_back(self.wall(), keep_s))
        old = [day for day in self.files.folders(ANSWERS) if day not in keep and len(day) == 10]
        for day in old:
            self.files.delete_folder(f"{ANSWERS}/{day}")
        self.offsets = {name: at for name, at in self.offsets.items() if name.split("/")[1] not in old}
        return len(old)

    def feedback_records(self, window_s: float) -> list[dict[str, Any]]:
        """The feedback records given over the days of the last `window_s` seconds (to count ratings again)."""
        out: list[dict[str, Any]] = []
        days = days_back(self.wall(), window_s)
        for name, _ in self.files.listing(""):  # a directory sink: one file per day
            if name in {f"{FEEDBACK_PREFIX}{day}.jsonl" for day in days}:
                out += [r for r in _records(self.files.read(name, 0)) if isinstance(r, dict)]
        for day in days:  # an S3 sink: one object per record under feedback-<day>/
            for name, _ in self.files.listing(f"{FEEDBACK_PREFIX}{day}"):
                out += [r for r in _records(self.files.read(name, 0)) if isinstance(r, dict)]
        return out


def _records(data: bytes) -> list[Any]:
    out = []
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


def sink_files(sink_path: str | None, sink_uri: str | None) -> SinkFiles | None:
    """The sink of `FeedbackArgs` as files; None for a scheme this build cannot read."""
    if sink_path:
        return DirectoryFiles(Path(sink_path))
    uri = sink_uri or ""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return DirectoryFiles(Path(unquote(urlparse(uri).path)))
    if uri.startswith("s3://"):
        return S3Files(uri)
    return None
