"""The serving app refuses model, tokenizer and adapter locations that could leave their mount."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from bigmodel_serving.args import AdapterSource, ModelSource


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"uri": "file:///tmp/bigmodel/../../etc"}, "uri"),
        ({"uri": "pvc://models/%2e%2e/x"}, "uri"),
        ({"uri": "pvc://models/llama", "local_path": "/mnt/bigmodel/models/../../etc"}, "local_path"),
        ({"uri": "hf://org/name", "tokenizer": "../../../etc/passwd"}, "tokenizer"),
        ({"uri": "file:///tmp/a\x00b"}, "uri"),
    ],
)
def test_model_locations_outside_the_mount_refused(fields: dict[str, str], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        ModelSource(served_name="m", **fields)
    assert info.value.errors()[0]["loc"] == (field,)


def test_adapter_with_dotdot_refused() -> None:
    with pytest.raises(ValidationError, match=r"'\.\.' segment"):
        AdapterSource(name="support", uri="pvc://adapters/../../tmp/x", local_path="/mnt/bigmodel/adapters/x")


def test_plain_locations_accepted() -> None:
    model = ModelSource(uri="pvc://models/llama..v2/weights", served_name="m", local_path="/mnt/bigmodel/models/llama")
    assert str(model.resolved_local_path()) == "/mnt/bigmodel/models/llama"
    adapter = AdapterSource(name="a", uri="file:///adapters/a")
    assert str(adapter.resolved_local_path()) == "/adapters/a"


# --- issue 21: the contract's rule (decode, then check; hidden characters; symlinks resolved) ------


@pytest.mark.parametrize(
    "uri", ["hf://org/na\u00a0me", "pvc://models/%252e%252e/x", "pvc://models/..\\..\\x", "file:///m/\u202ex"]
)
def test_encoded_escapes_and_hidden_characters_are_refused(uri: str) -> None:
    with pytest.raises(ValidationError):
        ModelSource(served_name="m", uri=uri)


def test_a_symlink_on_the_claim_that_leads_out_is_refused(tmp_path: Path) -> None:
    claim = tmp_path / "pvc" / "models"
    claim.mkdir(parents=True)
    os.symlink("/etc", claim / "llama")
    model = ModelSource.model_construct(uri="pvc://models/llama", served_name="m", local_path=f"{claim}/llama")
    with pytest.raises(ValueError, match="outside"):
        model.resolved_local_path()


def test_the_feedback_sink_stays_inside_its_mount(tmp_path: Path) -> None:
    from bigmodel_serving.args import FeedbackArgs
    from bigmodel_serving.feedback import FeedbackSinkError, open_sink

    mount, outside = tmp_path / "feedback", tmp_path / "elsewhere"
    mount.mkdir()
    outside.mkdir()
    os.symlink(outside, mount / "bot")
    sink = open_sink(FeedbackArgs(enabled=True, sink_path=f"{mount}/bot", sink_root=str(mount)))
    with pytest.raises(FeedbackSinkError, match="outside"):
        sink.append({"rating": 5})
    assert list(outside.iterdir()) == []
    fine = open_sink(FeedbackArgs(enabled=True, sink_path=f"{mount}/team/bot", sink_root=str(mount)))
    fine.append({"rating": 5})
    assert len(list((mount / "team" / "bot").glob("feedback-*.jsonl"))) == 1
