"""What the operator renders for the trainer: the grace period from the plan and the dataset size
limits passed through to the trainer's config (layouts of several GPUs: test_training_job_layouts.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from bigmodel_operator.api import FineTuneJobSpec
from bigmodel_operator.builders.trainer_job import (
    GRACE_DEFAULT_SECONDS,
    build_config_map,
    build_job,
    render_trainer_config,
    termination_grace_seconds,
)
from bigmodel_operator.builders.volumes import Mounts
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.planning import lookup_gpu, parse_model_config, plan_training
from bigmodel_training.config import TrainerConfig

EXAMPLE = Path(__file__).parents[3] / "docs" / "examples" / "finetunejob-lora.yaml"
LLAMA_8B = {
    "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
    "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256, "torch_dtype": "bfloat16",
}  # fmt: skip


def _example() -> dict[str, Any]:
    body: dict[str, Any] = yaml.safe_load(EXAMPLE.read_text())
    body["metadata"].update(namespace="team-a", uid="00000000-0000-0000-0000-000000000001", generation=1)
    return body


def _plan(method: str) -> dict[str, Any]:
    plan = plan_training(
        parse_model_config(LLAMA_8B), lookup_gpu("NVIDIA-H100-80GB-HBM3"), method=method,  # type: ignore[arg-type]
        batch_size=8, max_seq_length=2048,
    )  # fmt: skip
    return plan.model_dump(by_alias=True, mode="json")


def _job(body: dict[str, Any], plan: dict[str, Any] | None) -> dict[str, Any]:
    spec = FineTuneJobSpec.model_validate(body["spec"])
    mounts = Mounts(root=OperatorConfig().model_mount_root)
    config_map = build_config_map(body, render_trainer_config(body, spec, "hf://x/y", None, mounts))
    return build_job(body, spec, 1, mounts, OperatorConfig(), config_map, plan=plan)


def test_grace_period_covers_a_step_and_a_checkpoint_write() -> None:
    body = _example()
    lora, full = _plan("lora"), _plan("full")
    assert 0 < lora["checkpointGiB"] < 1 < 80 < full["checkpointGiB"]
    grace_lora = _job(body, lora)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    grace_full = _job(body, full)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert 60 < grace_lora < 120  # a LoRA checkpoint is small; the step dominates
    assert grace_full >= 60 + full["checkpointGiB"] * 1024 / 100  # ~90 GiB at 100 MiB/s
    assert _job(body, None)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] == GRACE_DEFAULT_SECONDS


def test_grace_period_scales_with_gradient_accumulation() -> None:
    body = _example()
    plan = _plan("lora")
    one = termination_grace_seconds(FineTuneJobSpec.model_validate(body["spec"]), plan)
    body["spec"].setdefault("hyperparameters", {})["gradientAccumulationSteps"] = 8
    eight = termination_grace_seconds(FineTuneJobSpec.model_validate(body["spec"]), plan)
    assert eight - one >= 7 * plan["microBatchSeconds"] - 1


def test_dataset_size_limits_reach_the_trainer() -> None:
    body = _example()
    body["spec"]["dataset"].update({"maxLineBytes": 65536, "maxFileBytes": 2**20})
    spec = FineTuneJobSpec.model_validate(body["spec"])
    rendered = render_trainer_config(body, spec, "hf://x/y", None, Mounts(root="/mnt/bigmodel"))
    config = TrainerConfig.model_validate(rendered)
    assert (config.dataset.max_line_bytes, config.dataset.max_file_bytes) == (65536, 2**20)


def test_a_recurrent_family_becomes_a_blocking_planned_condition() -> None:
    from bigmodel_operator.conditions import BLOCKING_PLAN_REASONS, Reason
    from bigmodel_operator.reconcile.model_source import ModelConfigResult
    from bigmodel_operator.reconcile.plan_glue import training_plan

    spec = FineTuneJobSpec.model_validate(_example()["spec"])
    result = training_plan(spec, ModelConfigResult({**LLAMA_8B, "model_type": "qwen3_next"}), OperatorConfig())
    assert result.reason == Reason.UNSUPPORTED_MODEL_FAMILY and result.plan is None
    assert "not supported for fine-tuning" in result.message
    assert result.reason in BLOCKING_PLAN_REASONS
    assert training_plan(spec, ModelConfigResult(LLAMA_8B), OperatorConfig()).reason != Reason.UNSUPPORTED_MODEL_FAMILY
