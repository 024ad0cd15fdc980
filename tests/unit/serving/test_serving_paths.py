"""The serving app refuses model, tokenizer and adapter locations that could leave their mount."""

from __future__ import annotations

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
