"""The trainer against a real S3 server on 127.0.0.1: s3:// base model, dataset and output, and a
resume in a "new pod" (empty local cache) from the checkpoint the bucket holds."""

from __future__ import annotations

import json
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bigmodel_training.config import OutputTarget, TrainerConfig
from bigmodel_training.errors import SourceError
from bigmodel_training.runner import run


def _keys(s3: Any, bucket: str, prefix: str) -> list[str]:
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(obj["Key"][len(prefix) :] for page in pages for obj in page.get("Contents", []))


@pytest.fixture
def s3_run(
    s3_server: Any,
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make_config: Callable[..., TrainerConfig],
    write_chat_dataset: Callable[..., Path],
) -> dict[str, Any]:
    """The tiny model and the dataset uploaded under a fresh prefix; AWS_* set as the Secret would."""
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("BIGMODEL_S3_CACHE", str(tmp_path / "s3cache"))
    run_id = secrets.token_hex(4)
    s3 = s3_server.client()
    for path in tiny_model_dir.iterdir():
        if path.is_file():
            s3.upload_file(str(path), "bigmodel-models", f"{run_id}/tiny/{path.name}")
    dataset = write_chat_dataset(tmp_path / "train.jsonl")
    s3.upload_file(str(dataset), "bigmodel-data", f"{run_id}/train.jsonl")
    output = f"s3://bigmodel-outputs/{run_id}/adapter"
    config = make_config(
        base_model={"uri": f"s3://bigmodel-models/{run_id}/tiny"},
        dataset={"uri": f"s3://bigmodel-data/{run_id}/train.jsonl"},
        hyperparameters={"max_steps": 6},
        checkpoint={"every_steps": 2, "keep": 1},
        progress={"file_path": str(tmp_path / "progress.json")},
    )
    config.output = OutputTarget(uri=output)
    return {"s3": s3, "config": config, "prefix": f"{run_id}/adapter/", "tmp": tmp_path}


def test_s3_model_dataset_and_output(s3_run: dict[str, Any]) -> None:
    s3, config, prefix = s3_run["s3"], s3_run["config"], s3_run["prefix"]
    metrics = run(config)
    assert metrics["steps"] == 6
    keys = _keys(s3, "bigmodel-outputs", prefix)
    for name in ("adapter_config.json", "adapter_model.safetensors", "metrics.json", "run-fingerprint.json"):
        assert name in keys, keys
    # keep=1: only the last checkpoint stays in the bucket, complete
    checkpoints = {k.split("/")[1] for k in keys if k.startswith("checkpoints/")}
    assert checkpoints == {"step-00000006"}, keys
    assert "checkpoints/step-00000006/COMPLETE" in keys
    remote_metrics = json.loads(s3.get_object(Bucket="bigmodel-outputs", Key=prefix + "metrics.json")["Body"].read())
    assert remote_metrics["output_uri"] == config.output.uri
    status = json.loads((s3_run["tmp"] / "progress.json").read_text())["status"]
    assert status["adapterUri"] == config.output.uri
    assert status["checkpoint"] == f"{config.output.uri}/checkpoints/step-00000006"


def test_s3_output_resumes_in_a_new_pod(s3_run: dict[str, Any]) -> None:
    s3, config, prefix, tmp = s3_run["s3"], s3_run["config"], s3_run["prefix"], s3_run["tmp"]

    class KilledError(Exception):
        pass

    def die_after_step_3(step: int) -> None:
        if step == 3:
            raise KilledError

    with pytest.raises(KilledError):
        run(config, on_step=die_after_step_3)
    keys = _keys(s3, "bigmodel-outputs", prefix)
    assert "checkpoints/step-00000002/COMPLETE" in keys, keys
    assert "metrics.json" not in keys  # not complete: no result yet
    # A new pod: nothing local survives; the bucket holds the checkpoint.
    shutil.rmtree(tmp / "s3cache")
    metrics = run(config)
    assert metrics["resumed_from_step"] == 2
    assert metrics["steps"] == 6
    assert "adapter_model.safetensors" in _keys(s3, "bigmodel-outputs", prefix)


def test_wrong_secret_is_a_clear_source_error(s3_run: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(SourceError, match="storage Secret"):
        run(s3_run["config"])
