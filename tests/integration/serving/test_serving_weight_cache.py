"""The weight cache's downloads against the real S3-compatible server (no Ray): one download, then `cached`;
a changed object is fetched again and a removed one deleted; progress is reported; the LRU bound evicts."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Any

import pytest

from bigmodel_serving import storage


@pytest.fixture
def cache(tmp_path: Path, s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path / "s3"))
    monkeypatch.delenv(storage.MAX_BYTES_ENV, raising=False)
    return tmp_path / "s3"


def _upload(s3_server: Any, prefix: str, files: dict[str, bytes]) -> str:
    client = s3_server.client()
    for name, data in files.items():
        client.put_object(Bucket="bigmodel-models", Key=f"{prefix}/{name}", Body=data)
    return f"s3://bigmodel-models/{prefix}"


def test_downloaded_once_then_cached_and_kept_exact(cache: Path, s3_server: Any) -> None:
    prefix = f"wc-{secrets.token_hex(4)}"
    uri = _upload(s3_server, prefix, {"config.json": b"{}", "model.safetensors": b"x" * 300_000})
    seen: list[tuple[int, int]] = []
    first = storage.fetch(uri, lambda done, total: seen.append((done, total)))
    assert (first.cached, first.bytes_total, first.bytes_downloaded) == (False, 300_002, 300_002)
    assert seen[-1] == (300_002, 300_002) and len(seen) >= 2  # progress while bytes arrive
    assert (first.path / "model.safetensors").read_bytes() == b"x" * 300_000
    second = storage.fetch(uri)
    assert (second.cached, second.bytes_downloaded, second.path) == (True, 0, first.path)

    s3_server.client().put_object(Bucket="bigmodel-models", Key=f"{prefix}/config.json", Body=b'{"a": 1}')
    s3_server.client().delete_object(Bucket="bigmodel-models", Key=f"{prefix}/model.safetensors")
    third = storage.fetch(uri)
    assert not third.cached and third.bytes_downloaded == 8  # only the changed object
    assert (third.path / "config.json").read_bytes() == b'{"a": 1}'
    assert not (third.path / "model.safetensors").exists()  # removed from the bucket, removed here


def test_the_bound_evicts_the_least_recently_used(cache: Path, s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    old = storage.fetch(_upload(s3_server, f"wc-old-{secrets.token_hex(3)}", {"w": b"o" * 1000}))
    recent = storage.fetch(_upload(s3_server, f"wc-recent-{secrets.token_hex(3)}", {"w": b"r" * 1000}))
    long_ago = time.time() - 2 * storage.EVICT_GRACE_S
    (old.path / storage.LAST_USED).write_text(f"{long_ago}\n")
    monkeypatch.setenv(storage.MAX_BYTES_ENV, "2500")  # room for two of the three (plus markers)
    new = storage.fetch(_upload(s3_server, f"wc-new-{secrets.token_hex(3)}", {"w": b"n" * 1000}))
    assert not old.path.exists(), "the least recently used model goes first"
    assert recent.path.exists() and new.path.exists(), os.listdir(cache)
