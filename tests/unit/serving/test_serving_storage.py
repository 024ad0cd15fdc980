"""Serving's S3 pieces without a server: URI checks, s3:// adapters accepted, the s3 feedback sink registered."""

from __future__ import annotations

import pytest

from bigmodel_serving import storage
from bigmodel_serving.args import AdapterSource, FeedbackArgs
from bigmodel_serving.feedback import FeedbackSinkError, open_sink


@pytest.mark.parametrize("uri", ["s3://", "s3:///key", "s3://b/../x", "gs://b/x", "s3://b/a\0b"])
def test_bad_uris_are_refused(uri: str) -> None:
    with pytest.raises(storage.StorageError):
        storage.split_uri(uri)


def test_split_uri() -> None:
    assert storage.split_uri("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert storage.split_uri("s3://bucket") == ("bucket", "")


def test_s3_adapter_needs_no_mount() -> None:
    adapter = AdapterSource(name="support.ftj-1", uri="s3://adapters/support/ftj-1")
    assert adapter.resolved_local_path() is None


def test_adapter_without_a_local_or_s3_location_is_refused() -> None:
    with pytest.raises(ValueError, match="s3://"):
        AdapterSource(name="x", uri="hf://org/adapter")


def test_s3_feedback_sink_is_registered() -> None:
    sink = open_sink(FeedbackArgs(enabled=True, sink_uri="s3://feedback/support-bot"))
    assert isinstance(sink, storage.S3Sink)
    assert (sink.bucket, sink.prefix, sink.location) == ("feedback", "support-bot", "s3://feedback/support-bot")


def test_cache_dir_is_per_uri(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv(storage.CACHE_ENV, str(tmp_path))
    one, two = storage.cache_dir_for("s3://a/x"), storage.cache_dir_for("s3://a/y")
    assert one.parent == two.parent == tmp_path and one != two


def test_unusable_sink_uri_is_a_sink_error() -> None:
    with pytest.raises((FeedbackSinkError, ValueError)):
        open_sink(FeedbackArgs(enabled=True, sink_uri="s3:///no-bucket"))
