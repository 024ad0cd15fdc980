"""S3 (and S3-compatible) object storage for serving: s3:// models and adapters, and the feedback sink.

vLLM loads weights from a local directory, so an s3:// model or adapter is downloaded once per
replica into `$BIGMODEL_S3_CACHE/<hash of the URI>` (default ~/.cache/bigmodel/s3; in a pod the
operator points it at the cache volume) and loaded from there. An adapter version's URI names one
FineTuneJob's output, which is written once, so a cached download stays valid; a partial one (the
replica died mid-download) lacks its `.complete` marker and is fetched again.

Credentials and the endpoint come from the environment as boto3 reads them: AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL / AWS_REGION (a Secret in the pod's env). This module is
the serving side's own small S3 code: serving and training do not import each other.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import secrets
import threading
import time
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

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


def fetch_dir(uri: str) -> Path:
    """The local copy of the folder `uri` (downloaded on first use; blocking: call it from a thread)."""
    bucket, key = split_uri(uri)
    target = cache_dir_for(uri.rstrip("/"))
    with _lock(uri):
        if (target / COMPLETE).is_file():
            return target
        prefix = key.rstrip("/") + "/" if key else ""
        s3 = client()
        count = 0
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    rel = obj["Key"][len(prefix) :]
                    if not rel or rel.endswith("/"):
                        continue
                    parts = PurePosixPath(rel).parts
                    if ".." in parts or rel.startswith("/") or parts[0] == COMPLETE:
                        raise StorageError(f"{uri}: object {rel!r} would leave the download folder")
                    count += 1
                    if count > MAX_OBJECTS:
                        raise StorageError(f"{uri}: more than {MAX_OBJECTS} objects under the prefix")
                    local = target.joinpath(*parts)
                    if local.is_file() and local.stat().st_size == int(obj["Size"]):
                        continue
                    local.parent.mkdir(parents=True, exist_ok=True)
                    partial = local.with_name(f".{local.name}.part")
                    s3.download_file(bucket, obj["Key"], str(partial))
                    os.replace(partial, local)
        except StorageError:
            raise
        except Exception as exc:
            raise _error(uri, exc) from exc
        if count == 0:
            raise StorageError(f"{uri}: no objects under this prefix")
        (target / COMPLETE).write_text(json.dumps({"uri": uri, "files": count, "at": time.time()}) + "\n")
        return target


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
