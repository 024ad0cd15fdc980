"""Resume only into checkpoints written for the same data, model and config."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bigmodel_training.errors import ConfigError
from bigmodel_training.runner import FINGERPRINT_FILE, claim_output, file_digest, model_digest


def with_checkpoint(out: Path) -> Path:
    step = out / "checkpoints" / "step-00000005"
    step.mkdir(parents=True)
    (step / "COMPLETE").write_text('{"step": 5}')
    return out


def test_an_overwritten_dataset_does_not_resume_at_a_stale_position(tmp_path: Path) -> None:
    data = tmp_path / "train.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    out = with_checkpoint(tmp_path / "out")
    claim_output(out, {"fingerprint": "cfg", "dataset_sha256": file_digest(data), "model_digest": "m"})
    data.write_text('{"prompt": "a", "completion": "c"}\n')  # same URI, new content
    claim_output(out, {"fingerprint": "cfg"})  # the early, config-only claim keeps the recorded digests
    with pytest.raises(ConfigError, match=r"the dataset's content .* changed"):
        claim_output(out, {"fingerprint": "cfg", "dataset_sha256": file_digest(data), "model_digest": "m"})


def test_a_changed_model_is_refused_too(tmp_path: Path) -> None:
    out = with_checkpoint(tmp_path / "out")
    claim_output(out, {"fingerprint": "cfg", "dataset_sha256": "d", "model_digest": "m1"})
    with pytest.raises(ConfigError, match="the base model"):
        claim_output(out, {"fingerprint": "cfg", "dataset_sha256": "d", "model_digest": "m2"})


def test_without_progress_a_new_dataset_simply_starts_over(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    claim_output(out, {"fingerprint": "cfg", "dataset_sha256": "d1", "model_digest": "m"})
    claim_output(out, {"fingerprint": "cfg", "dataset_sha256": "d2", "model_digest": "m"})
    assert json.loads((out / FINGERPRINT_FILE).read_text())["dataset_sha256"] == "d2"
    with pytest.raises(ConfigError, match="training configuration"):  # as before: a new config is refused
        claim_output(out, {"fingerprint": "other"})


def test_model_digest_sees_config_and_weight_changes(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama"}')
    weights = bytearray(9 * 2**20)
    (model / "model.safetensors").write_bytes(bytes(weights))
    first = model_digest(model)
    assert model_digest(model) == first
    weights[len(weights) // 2 + 10] = 1  # a byte inside the middle sample
    (model / "model.safetensors").write_bytes(bytes(weights))
    second = model_digest(model)
    assert second != first
    (model / "config.json").write_text('{"model_type": "llama", "rope_theta": 1}')
    assert model_digest(model) not in (first, second)
