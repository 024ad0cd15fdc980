"""S3 (and S3-compatible) object storage for serving: s3:// models and adapters, and the feedback sink.

vLLM loads weights from a local directory, so an s3:// model or adapter is downloaded into
`$BIGMODEL_S3_CACHE/<hash of the URI>` (default ~/.cache/bigmodel/s3; in a pod the operator points it at
the pod's cache volume, or at the BigModel's shared weight cache, a ReadWriteMany claim every replica
and wake reads) and loaded from there. A copy is exact: its `.complete` marker records each object's
size and ETag, and every fetch compares them with one listing of the prefix; a partial copy (the
replica died mid-download) lacks the marker and is completed. The trainer (bigmodel_training.storage)
uses the same folder per URI, so a FineTuneJob on the same claim reads the cached model too.

Credentials and the endpoint come from the environment as boto3 reads them: AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL / AWS_REGION (a Secret in the pod's env). This module is
the serving side's own small S3 code: serving and training do not import each other.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

logger = logging.getLogger("ray.serve")

CACHE_ENV = "BIGMODEL_S3_CACHE"
COMPLETE = ".complete"
ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION")
MAX_OBJECTS = 100_000
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class StorageError(OSError):
    """An object-store location could not be read or written; the message names it and why."""


def split_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/key -> ("bucket", "key"); refuses an empty bucket, '..' segments and NUL bytes."""
    if not uri.startswith("s3://"):
        raise StorageError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise StorageError(f"{uri}: no bucket")
    if ".." in key.split("/") or "\0" in uri:
        raise StorageError(f"{uri}: a '..' segment or NUL byte is not allowed")
    return bucket, key


def client() -> Any:
    """A boto3 S3 client for the environment as it is now (a changed Secret means new credentials)."""
    return _client(tuple(os.environ.get(key) for key in ENV_KEYS))


@functools.lru_cache(maxsize=4)
def _client(env: tuple[str | None, ...]) -> Any:
    try:
        import boto3  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as exc:
        raise StorageError("s3:// locations need boto3 in the serving image") from exc
    return boto3.session.Session().client("s3")


def _error(uri: str, exc: Exception) -> StorageError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
    hint = " (check the storage Secret's AWS_* keys)" if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch"} else ""
    return StorageError(f"{uri}: {exc}{hint}")


def cache_dir_for(uri: str) -> Path:
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bigmodel" / "s3")
    return root / hashlib.sha256(uri.encode()).hexdigest()[:16]


def _lock(uri: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(uri, threading.Lock())


@dataclass(frozen=True)
class Fetched:
    """A local copy of an s3:// folder, and what it took to get it."""

    path: Path
    bytes_total: int
    bytes_downloaded: int
    cached: bool  # nothing was downloaded: the copy in the cache was complete and current


Progress = Callable[[int, int], None]  # (bytes in the local copy so far, bytes in all)


def fetch_dir(uri: str) -> Path:
    """The local copy of the folder `uri` (downloaded on first use; blocking: call it from a thread)."""
    return fetch(uri).path


def _listing(uri: str) -> dict[str, tuple[int, str]]:
    """Object path below the prefix -> (size, ETag), checked so that no object leaves the folder."""
    bucket, key = split_uri(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    objects: dict[str, tuple[int, str]] = {}
    try:
        for page in client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :]
                if not rel or rel.endswith("/"):
                    continue
                parts = PurePosixPath(rel).parts
                if ".." in parts or rel.startswith("/") or parts[0] in (COMPLETE, LAST_USED):
                    raise StorageError(f"{uri}: object {rel!r} would leave the download folder")
                objects[rel] = (int(obj["Size"]), str(obj.get("ETag", "")).strip('"'))
                if len(objects) > MAX_OBJECTS:
                    raise StorageError(f"{uri}: more than {MAX_OBJECTS} objects under the prefix")
    except StorageError:
        raise
    except Exception as exc:
        raise _error(uri, exc) from exc
    if not objects:
        raise StorageError(f"{uri}: no objects under this prefix")
    return objects


def _recorded(target: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((target / COMPLETE).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def fetch(uri: str, progress: Progress | None = None) -> Fetched:
    """The local copy of the folder `uri`, current with the bucket (blocking: call it from a thread).

    The copy is exact: the objects' sizes and ETags are compared with what the last complete download
    recorded, so a changed object is fetched again and a removed one deleted. Replicas on one shared
    weight cache take a file lock per folder: the second waits and then finds the copy complete. Before
    downloading, least recently used folders are evicted down to BIGMODEL_WEIGHT_CACHE_MAX_BYTES."""
    bucket, key = split_uri(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    target = cache_dir_for(uri.rstrip("/"))
    with _lock(uri):
        try:
            objects = _listing(uri)
        except StorageError as error:
            recorded = _recorded(target)
            if recorded is None:
                raise
            # The store is unreachable but a complete copy exists: serve it rather than fail a wake.
            total = sum(int(size) for size, _ in (recorded.get("objects") or {}).values())
            logger.warning("bigmodel: %s; using the cached copy from %s", error, recorded.get("at"))
            touch_last_used(target)
            return Fetched(target, total, 0, True)
        total = sum(size for size, _ in objects.values())
        target.mkdir(parents=True, exist_ok=True)
        with _folder_lock(target):
            recorded = _recorded(target) or {}
            known = {rel: tuple(entry) for rel, entry in (recorded.get("objects") or {}).items()}
            stale = [
                rel
                for rel, (size, etag) in objects.items()
                if not _current(target / rel, size) or (rel in known and known[rel][1] != etag)
            ]
            if not stale and known == objects:
                touch_last_used(target)
                return Fetched(target, total, 0, True)
            needed = sum(objects[rel][0] for rel in stale)
            evict_for(target, needed)
            done = total - needed
            if progress:
                progress(done, total)
            s3 = client()
            try:
                for rel in stale:
                    local = target.joinpath(*PurePosixPath(rel).parts)
                    local.parent.mkdir(parents=True, exist_ok=True)
                    partial = local.with_name(f".{local.name}.part")

                    def advance(chunk: int) -> None:
                        nonlocal done
                        done += chunk
                        if progress:
                            progress(done, total)

                    s3.download_file(bucket, prefix + rel, str(partial), Callback=advance)
                    os.replace(partial, local)
            except Exception as exc:
                raise _error(uri, exc) from exc
            for leftover in _files(target):
                if leftover.relative_to(target).as_posix() not in objects:
                    leftover.unlink()  # an object deleted from the bucket since the last download
            marker = {"uri": uri, "files": len(objects), "at": time.time(), "objects": objects}
            (target / COMPLETE).write_text(json.dumps(marker) + "\n")
            touch_last_used(target)
            return Fetched(target, total, needed, needed == 0)


def _current(local: Path, size: int) -> bool:
    return local.is_file() and local.stat().st_size == size


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")]


@contextlib.contextmanager
def _folder_lock(target: Path) -> Iterator[None]:
    """An exclusive lock on `target` across processes and pods (flock on the cache's file system)."""
    import fcntl

    with open(target.parent / f".{target.name}.lock", "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _locked_by_other(target: Path) -> bool:
    import fcntl

    try:
        with open(target.parent / f".{target.name}.lock", "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
    except OSError:
        return True
    return False


# --------------------------------------------------------------------------------------------
# eviction: least recently used first, never a folder used within the grace period or being written
# --------------------------------------------------------------------------------------------

MAX_BYTES_ENV = "BIGMODEL_WEIGHT_CACHE_MAX_BYTES"
LAST_USED = ".last-used"
EVICT_GRACE_S = 3600.0
"""A folder used within the last hour is never evicted: a replica may still be loading from it."""


def touch_last_used(target: Path) -> None:
    (target / LAST_USED).write_text(f"{time.time():.3f}\n")


def _last_used(folder: Path) -> float:
    try:
        return float((folder / LAST_USED).read_text())
    except (OSError, ValueError):
        try:
            return folder.stat().st_mtime
        except OSError:
            return 0.0


@dataclass(frozen=True)
class CacheEntry:
    name: str
    size: int
    last_used: float


def eviction_plan(
    entries: list[CacheEntry], used: int, needed: int, max_bytes: int, now: float, grace_s: float = EVICT_GRACE_S
) -> list[str]:
    """Which folders to delete, oldest use first, so that `used + needed <= max_bytes`; folders used within
    `grace_s` are kept even if the bound cannot be met then (the download goes ahead and the claim's own
    size is the hard limit)."""
    plan: list[str] = []
    for entry in sorted(entries, key=lambda e: e.last_used):
        if used + needed <= max_bytes:
            break
        if now - entry.last_used < grace_s:
            continue
        plan.append(entry.name)
        used -= entry.size
    return plan


def evict_for(target: Path, needed: int) -> list[str]:
    """Make room for `needed` bytes next to `target` under the cache's bound; returns what was deleted."""
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    if not raw.isdigit():
        return []
    root = target.parent
    sizes = {
        folder.name: sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        for folder in root.iterdir()
        if folder.is_dir()
    }
    entries = [
        CacheEntry(name, size, _last_used(root / name))
        for name, size in sizes.items()
        if name != target.name and not _locked_by_other(root / name)
    ]
    plan = eviction_plan(entries, sum(sizes.values()), needed, int(raw), time.time())
    for name in plan:
        shutil.rmtree(root / name, ignore_errors=True)
        logger.info("bigmodel: evicted %s (%d bytes) from the weight cache", name, sizes[name])
    return plan


class S3Sink:
    """The feedback sink on S3: one object per record (objects cannot be appended to), as JSONL under
    `<prefix>/feedback-YYYY-MM-DD/<time>-<id>.jsonl`; the trainer reads every `*.jsonl` below the prefix."""

    def __init__(self, uri: str) -> None:
        self.bucket, key = split_uri(uri)
        self.prefix = key.strip("/")
        self.location = uri

    def append(self, record: dict[str, Any]) -> None:
        now = datetime.now(UTC)
        name = f"{now.strftime('%Y%m%dT%H%M%S%f')}-{secrets.token_hex(4)}.jsonl"
        key = "/".join(p for p in (self.prefix, f"feedback-{now.strftime('%Y-%m-%d')}", name) if p)
        body = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        try:
            client().put_object(Bucket=self.bucket, Key=key, Body=body, ContentType="application/x-ndjson")
        except StorageError:
            raise
        except Exception as exc:
            raise _error(f"s3://{self.bucket}/{key}", exc) from exc
