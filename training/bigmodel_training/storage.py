"""S3 (and S3-compatible) object storage for the trainer: datasets, base models and outputs.

Credentials and the endpoint come from the environment, the way boto3 reads them:
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL / AWS_REGION (the operator fills them
from the FineTuneJob's `credentials.storageSecretName`). An s3:// output is written to a local
staging directory and uploaded: each checkpoint as soon as it is complete (its COMPLETE marker last,
so a reader that sees the marker sees the whole checkpoint), the adapter and metrics.json at the end
(metrics.json last: it means "this output is complete"). A restarted run first downloads the run
fingerprint and the newest complete checkpoint, so it resumes where the last pod stopped.
"""

from __future__ import annotations

import fnmatch
import functools
import hashlib
import logging
import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

from bigmodel_contract.safe_paths import path_problem
from bigmodel_training.errors import SourceError, UnsupportedError

log = logging.getLogger(__name__)
CACHE_ENV = "BIGMODEL_S3_CACHE"
MAX_OBJECTS = 100_000  # a model or output prefix holding more is a mistake (a whole bucket?)


def split_uri(uri: str) -> tuple[str, str]:
    """s3://bucket/key/path -> ("bucket", "key/path"); refuses an empty bucket and '..' segments."""
    if not uri.startswith("s3://"):
        raise SourceError(f"{uri}: not an s3:// URI")
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise SourceError(f"{uri}: no bucket")
    problem = path_problem(key)
    if problem:
        raise SourceError(f"{uri}: {problem}")
    return bucket, key


ENV_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION")


def client() -> Any:
    """A boto3 S3 client configured from the environment (as it is now: boto3's default session
    would keep the first credentials it saw for the life of the process)."""
    return _client(tuple(os.environ.get(key) for key in ENV_KEYS))


@functools.lru_cache(maxsize=4)
def _client(env: tuple[str | None, ...]) -> Any:
    try:
        import boto3  # type: ignore[import-untyped, import-not-found, unused-ignore]
    except ImportError as exc:
        raise UnsupportedError("s3:// locations need boto3 in the trainer image") from exc
    return boto3.session.Session().client("s3")


def _describe(uri: str, exc: Exception) -> SourceError:
    code = getattr(exc, "response", {}).get("Error", {}).get("Code") if hasattr(exc, "response") else None
    hint = " (check the storage Secret's AWS_* keys)" if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch"} else ""
    return SourceError(f"{uri}: {exc}{hint}")


def download_file(uri: str, target: Path) -> Path:
    bucket, key = split_uri(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        client().download_file(bucket, key, str(target))
    except (SourceError, UnsupportedError):
        raise
    except Exception as exc:
        raise _describe(uri, exc) from exc
    return target


def list_objects(uri: str) -> list[tuple[str, int]]:
    """(path relative to the prefix, size) of every object under `uri` treated as a folder."""
    bucket, key = split_uri(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    found: list[tuple[str, int]] = []
    try:
        pages = client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :]
                if rel and not rel.endswith("/"):
                    found.append((rel, int(obj["Size"])))
                if len(found) > MAX_OBJECTS:
                    raise SourceError(f"{uri}: more than {MAX_OBJECTS} objects under the prefix")
    except (SourceError, UnsupportedError):
        raise
    except Exception as exc:
        raise _describe(uri, exc) from exc
    return found


def _safe_local(root: Path, rel: str, uri: str) -> Path:
    parts = PurePosixPath(rel).parts
    if not parts or rel.startswith("/") or path_problem(rel):
        raise SourceError(f"{uri}: object {rel!r} would leave the download folder")
    return root.joinpath(*parts)


def download_prefix(uri: str, target: Path, patterns: Iterable[str] | None = None) -> Path:
    """Download every object under `uri` (matching a basename pattern, when given) into `target`.

    Files already there with the same size are kept (a restarted pod does not download again).
    """
    bucket, key = split_uri(uri)
    prefix = key.rstrip("/") + "/" if key else ""
    wanted = list(patterns or [])
    s3 = client()
    count = 0
    for rel, size in list_objects(uri):
        if wanted and not any(fnmatch.fnmatch(PurePosixPath(rel).name, p) for p in wanted):
            continue
        local = _safe_local(target, rel, uri)
        count += 1
        if local.is_file() and local.stat().st_size == size:
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        partial = local.with_name(f".{local.name}.part")
        try:
            s3.download_file(bucket, prefix + rel, str(partial))
        except Exception as exc:
            raise _describe(f"s3://{bucket}/{prefix}{rel}", exc) from exc
        os.replace(partial, local)
    if count == 0:
        raise SourceError(f"{uri}: no objects under this prefix")
    log.info("downloaded %s -> %s (%d files)", uri, target, count)
    return target


def cache_dir_for(uri: str) -> Path:
    """A per-URI download folder under $BIGMODEL_S3_CACHE (default ~/.cache/bigmodel/s3)."""
    root = Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "bigmodel" / "s3")
    return root / hashlib.sha256(uri.encode()).hexdigest()[:16]


def upload_file(local: Path, uri: str) -> None:
    bucket, key = split_uri(uri)
    try:
        client().upload_file(str(local), bucket, key)
    except Exception as exc:
        raise _describe(uri, exc) from exc


def upload_tree(local_dir: Path, uri: str, *, skip: Iterable[str] = (), last: Iterable[str] = ()) -> int:
    """Upload every file under `local_dir` to `uri`/..., except top-level names in `skip` and hidden
    files; names in `last` (relative paths) go after all the others, in the order given."""
    skipped, ordered = set(skip), list(last)
    files = sorted(
        p for p in local_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(local_dir).parts)
        and p.relative_to(local_dir).parts[0] not in skipped
    )  # fmt: skip
    rels = [p.relative_to(local_dir).as_posix() for p in files]
    rels.sort(key=lambda rel: ordered.index(rel) + 1 if rel in ordered else 0)
    base = uri.rstrip("/")
    for rel in rels:
        upload_file(local_dir / rel, f"{base}/{rel}")
    return len(rels)


def delete_prefix(uri: str) -> None:
    """Delete every object under `uri` treated as a folder (an old checkpoint)."""
    bucket, key = split_uri(uri)
    prefix = key.rstrip("/") + "/"
    keys = [prefix + rel for rel, _ in list_objects(uri)]
    s3 = client()
    for start in range(0, len(keys), 1000):
        batch = [{"Key": k} for k in keys[start : start + 1000]]
        try:
            s3.delete_objects(Bucket=bucket, Delete={"Objects": batch, "Quiet": True})
        except Exception as exc:
            raise _describe(uri, exc) from exc
