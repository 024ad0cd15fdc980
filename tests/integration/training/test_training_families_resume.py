"""Real CPU runs through `runner.run`: a family with a logit transform and an attention kernel sdpa
cannot express (Gemma-2), a refused recurrent family, and a dataset overwritten under a run."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bigmodel_training.config import TrainerConfig
from bigmodel_training.errors import ConfigError, UnsupportedError
from bigmodel_training.runner import run

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def tiny_family_dir(tiny_model_dir: Path, target: Path, model_type: str, **extra: Any) -> Path:
    """A random model of `model_type` with the tiny Llama's tokenizer, saved for from_pretrained."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    base = json.loads((tiny_model_dir / "config.json").read_text())
    config = AutoConfig.for_model(
        model_type, vocab_size=base["vocab_size"], hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
        bos_token_id=base.get("bos_token_id"), eos_token_id=base.get("eos_token_id"),
        pad_token_id=base.get("pad_token_id"), **extra,
    )  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(target)
    for name in TOKENIZER_FILES:
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, target / name)
    return target


def test_gemma2_trains_with_its_soft_capped_objective(
    make_config: Callable[..., TrainerConfig], tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = tiny_family_dir(
        tiny_model_dir, tmp_path / "gemma2", "gemma2", final_logit_softcapping=2.0, query_pre_attn_scalar=16
    )
    config = make_config(base_model={"uri": f"file://{model}"}, hyperparameters={"max_steps": 6})
    metrics = run(config)  # loads with eager attention (sdpa cannot soft-cap), passes the objective check
    assert metrics["steps"] == 6
    losses = [h["loss"] for h in metrics["loss_curve"]]
    assert losses[-1] < losses[0], losses


def test_a_recurrent_family_is_refused_before_loading_weights(
    make_config: Callable[..., TrainerConfig], tiny_model_dir: Path, tmp_path: Path
) -> None:
    model = tmp_path / "next"
    model.mkdir()
    (model / "config.json").write_text(
        json.dumps({"model_type": "qwen3_next", "architectures": ["Qwen3NextForCausalLM"]})
    )
    for name in TOKENIZER_FILES:
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, model / name)
    config = make_config(base_model={"uri": f"file://{model}"})
    with pytest.raises(UnsupportedError, match="packed example"):
        run(config)


def test_an_overwritten_dataset_is_not_resumed(
    make_config: Callable[..., TrainerConfig], write_chat_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    config = make_config(hyperparameters={"max_steps": 4}, checkpoint={"every_steps": 2})
    run(config)
    dataset = Path(config.dataset.uri.removeprefix("file://"))
    extra = [{"messages": [{"role": "user", "content": "New?"}, {"role": "assistant", "content": "Yes."}]}]
    write_chat_dataset(dataset, extra)  # same URI, new content
    with pytest.raises(ConfigError, match="the dataset's content"):
        run(config)
