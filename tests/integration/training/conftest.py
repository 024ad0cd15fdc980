"""Helpers for real (CPU) training runs on the tiny random Llama model."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bigmodel_training.config import TrainerConfig

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Norway", "Oslo"),
    ("Chile", "Santiago"), ("India", "New Delhi"), ("Cuba", "Havana"), ("Greece", "Athens"), ("Ireland", "Dublin"),
    ("Poland", "Warsaw"),
]  # fmt: skip


def _write_chat_dataset(path: Path, extra: list[dict[str, Any]] | None = None) -> Path:
    """A small memorisable chat dataset: one capital per country."""
    rows = [
        {"messages": [{"role": "user", "content": f"What is the capital of {country}?"},
                      {"role": "assistant", "content": f"The capital of {country} is {city}."}]}
        for country, city in CAPITALS
    ]  # fmt: skip
    path.write_text("".join(json.dumps(r) + "\n" for r in rows + (extra or [])))
    return path


@pytest.fixture
def write_chat_dataset() -> Callable[..., Path]:
    """`write(path, extra=None)`: the memorisable dataset, plus extra records."""
    return _write_chat_dataset


def _wait_for_step(out: Path, process: Any, step: int, timeout_s: float) -> None:
    """Until the trainer writing to `out` reports `step` in its progress.json, exits, or `timeout_s` passes."""
    progress = out / "progress.json"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if progress.is_file() and json.loads(progress.read_text())["status"]["progress"].get("step", 0) >= step:
            return
        time.sleep(0.05)


@pytest.fixture
def wait_for_step() -> Callable[[Path, Any, int, float], None]:
    """`wait_for_step(out, process, step, timeout_s)`: a running trainer's progress (e.g. before a SIGTERM)."""
    return _wait_for_step


def deep_update(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        out[key] = deep_update(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


@pytest.fixture
def make_config(tiny_model_dir: Path, tmp_path: Path) -> Callable[..., TrainerConfig]:
    """A fast LoRA config over the memorisable dataset; keyword dicts are deep-merged into it."""
    dataset = _write_chat_dataset(tmp_path / "train.jsonl")

    def make(output: str = "out", **patch: Any) -> TrainerConfig:
        base = {
            "base_model": {"uri": f"file://{tiny_model_dir}"},
            "dataset": {"uri": f"file://{dataset}", "format": "chat", "min_examples": 4},
            "method": {"type": "lora", "rank": 8, "dropout": 0.0},
            "hyperparameters": {
                "max_steps": 30, "learning_rate": 1e-2, "batch_size": 4, "max_seq_length": 128,
                "warmup_ratio": 0.1, "gradient_checkpointing": False, "seed": 7,
            },
            "output": {"uri": f"file://{tmp_path / output}"},
            "checkpoint": {"every_steps": 10, "keep": 2},
            "progress": {"sink": "file", "file_path": str(tmp_path / output / "progress.json"), "interval_s": 0},
        }  # fmt: skip
        return TrainerConfig.model_validate(deep_update(base, patch))

    return make
