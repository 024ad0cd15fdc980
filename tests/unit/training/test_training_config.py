"""The trainer's config contract: defaults, strictness, JSON and YAML."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from bigmodel_training.config import ALL_LINEAR, TrainerConfig

MINIMAL = {
    "base_model": {"uri": "hf://meta-llama/Llama-3.2-1B-Instruct"},
    "dataset": {"uri": "pvc://data/train.jsonl", "format": "chat"},
    "output": {"uri": "pvc://out/run-1"},
}


def test_defaults() -> None:
    config = TrainerConfig.model_validate(MINIMAL)
    assert config.method.type == "lora"
    assert config.method.rank == 16
    assert config.method.lora_alpha == 32
    assert config.method.target_modules == [ALL_LINEAR]
    hp = config.hyperparameters
    assert (hp.epochs, hp.learning_rate, hp.batch_size, hp.max_seq_length, hp.packing) == (1, 2e-4, 8, 2048, True)
    assert hp.gradient_checkpointing is None  # auto: only when activations would not fit
    assert config.checkpoint.every_steps == 100
    assert config.checkpoint.keep == 2
    assert config.privacy.redact_pii is False
    assert config.progress.sink == "none"
    assert config.hf_token_env == "HF_TOKEN"
    assert config.job is None


def test_round_trip_through_json_and_yaml(tmp_path: Path) -> None:
    config = TrainerConfig.model_validate(
        {**MINIMAL, "job": {"name": "ftj", "namespace": "team-a"}, "progress": {"sink": "kube", "interval_s": 15}}
    )
    json_file = tmp_path / "config.json"
    json_file.write_text(config.to_json())
    assert TrainerConfig.from_file(json_file) == config
    import yaml

    yaml_file = tmp_path / "config.yaml"
    yaml_file.write_text(yaml.safe_dump(json.loads(config.to_json())))
    assert TrainerConfig.from_file(yaml_file) == config


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"unknown": 1}, "unknown"),
        ({"method": {"type": "prefix"}}, "method.type"),
        ({"method": {"rank": 0}}, "method.rank"),
        ({"dataset": {"uri": "pvc://d/x.jsonl", "validation_split": 0.9}}, "validation_split"),
        ({"dataset": {"uri": "ftp://host/x.jsonl"}}, "unsupported URI"),
        ({"output": {"uri": "file://relative/path"}}, "absolute"),
        ({"hyperparameters": {"maxSeqLength": 512}}, "maxSeqLength"),  # snake_case only
        ({"progress": {"sink": "kube"}}, "job.name"),
        ({"progress": {"sink": "file"}}, "file_path"),
    ],
)
def test_invalid_configs_are_refused(patch: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValidationError) as error:
        TrainerConfig.model_validate({**MINIMAL, **patch})
    assert fragment in str(error.value)


def test_alpha_defaults_to_twice_the_rank() -> None:
    config = TrainerConfig.model_validate({**MINIMAL, "method": {"rank": 8}})
    assert config.method.lora_alpha == 16
    config = TrainerConfig.model_validate({**MINIMAL, "method": {"rank": 8, "alpha": 8}})
    assert config.method.lora_alpha == 8


def test_config_module_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = "import sys, bigmodel_training.config, bigmodel_training.dataset, bigmodel_training.redact; "
    code += "sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
