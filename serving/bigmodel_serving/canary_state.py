"""The canary's evidence on the feedback sink, so a restarted canary actor goes on where it stopped.

One small JSON document per canary (route, stable, candidate), the request signals of both versions as
counts, sums and sums of squares (canary_book.CanaryBook.dump_pair), rewritten at most every
`SAVE_INTERVAL_S` while it changes and at once on a decision:

    <sink>/canary/<route>/<candidate>.json        a directory sink: written to a temporary file,
                                                   fsync'd and renamed over the old one
    s3://<bucket>/<prefix>/canary/<route>/<candidate>.json   an S3 sink: one PUT

The ratings are not kept here: the feedback store counts them from its own records. Without a
sink (feedback off) the evidence lives in the actor's memory only, and a restarted actor begins the
test again (docs/loop.md, "Canary").
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Protocol

from bigmodel_serving.args import FeedbackArgs

logger = logging.getLogger("ray.serve")

SAVE_INTERVAL_S = 5.0
FOLDER = "canary"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def _name(value: str | None) -> str:
    return _UNSAFE.sub("_", value or "base")[:120] or "base"


class CanaryStateStore(Protocol):
    location: str

    def save(self, route: str, candidate: str, state: dict[str, Any]) -> None: ...

    def load(self, route: str, candidate: str) -> dict[str, Any] | None: ...


class DirectoryStateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory / FOLDER
        self.location = str(self.directory)

    def _path(self, route: str, candidate: str) -> Path:
        return self.directory / _name(route) / f"{_name(candidate)}.json"

    def save(self, route: str, candidate: str, state: dict[str, Any]) -> None:
        path = self._path(route, candidate)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(state, sort_keys=True))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        descriptor = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def load(self, route: str, candidate: str) -> dict[str, Any] | None:
        path = self._path(route, candidate)
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as error:
            logger.warning("bigmodel: canary state %s unreadable, starting afresh: %r", path, error)
            return None
        return loaded if isinstance(loaded, dict) else None


class S3StateStore:
    def __init__(self, uri: str) -> None:
        from bigmodel_serving.storage import split_uri

        self.bucket, key = split_uri(uri)
        self.prefix = "/".join(p for p in (key.strip("/"), FOLDER) if p)
        self.location = f"s3://{self.bucket}/{self.prefix}"

    def _key(self, route: str, candidate: str) -> str:
        return f"{self.prefix}/{_name(route)}/{_name(candidate)}.json"

    def save(self, route: str, candidate: str, state: dict[str, Any]) -> None:
        from bigmodel_serving.storage import client

        body = json.dumps(state, sort_keys=True).encode()
        client().put_object(Bucket=self.bucket, Key=self._key(route, candidate), Body=body)

    def load(self, route: str, candidate: str) -> dict[str, Any] | None:
        from bigmodel_serving.storage import client

        try:
            body = client().get_object(Bucket=self.bucket, Key=self._key(route, candidate))["Body"].read()
        except Exception as error:
            code = getattr(error, "response", {}).get("Error", {}).get("Code")
            if code not in ("NoSuchKey", "404"):
                logger.warning("bigmodel: canary state in %s unreadable, starting afresh: %r", self.location, error)
            return None
        try:
            loaded = json.loads(body)
        except ValueError:
            return None
        return loaded if isinstance(loaded, dict) else None


def open_state_store(feedback: FeedbackArgs | None) -> CanaryStateStore | None:
    """Where the canary's evidence goes: next to the feedback records; None without a sink."""
    if feedback is None or not feedback.enabled:
        return None
    if feedback.sink_path:
        return DirectoryStateStore(Path(feedback.sink_path))
    uri = feedback.sink_uri or ""
    if uri.startswith("file://"):
        from urllib.parse import unquote, urlparse

        return DirectoryStateStore(Path(unquote(urlparse(uri).path)))
    if uri.startswith("s3://"):
        return S3StateStore(uri)
    return None
