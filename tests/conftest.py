"""Fixtures shared by every test tier."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir() -> Path:
    """A tiny random Llama model with a locally trained tokenizer (generated offline, cached).

    Lives in `$BIGMODEL_CACHE/models/tiny-llama-v2` (default `~/.cache/bigmodel`); the first run
    writes it in a few seconds, later runs reuse it.
    """
    from bigmodel_training.tinymodel import make_tiny_model

    return make_tiny_model()


@pytest.fixture(scope="session")
def s3_server():  # type: ignore[no-untyped-def]
    """A real S3-compatible server on 127.0.0.1 (tests/cluster/s3server.py) for the whole session.

    Buckets `bigmodel-data`, `bigmodel-models` and `bigmodel-outputs` exist; `.env()` gives the
    AWS_* variables a storage Secret holds, `.client()` a boto3 client. Built from the Go module
    proxy on first use (seconds), cached under ~/.cache/bigmodel/k8s.
    """
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent / "cluster"))
    try:
        from s3server import start_s3
    finally:
        sys.path.pop(0)
    with start_s3(["bigmodel-data", "bigmodel-models", "bigmodel-outputs"]) as server:
        yield server
