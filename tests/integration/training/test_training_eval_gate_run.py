"""The eval gate on real CPU runs of the tiny model: base vs adapted held-out loss, a scored eval set,
and the verdict in the FineTuneJob status (the file sink stands in for the status subresource)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bigmodel_training.config import TrainerConfig
from bigmodel_training.errors import DatasetError
from bigmodel_training.runner import run

CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
            ("Egypt", "Cairo")]  # fmt: skip


def _status(config: TrainerConfig) -> dict[str, Any]:
    path = Path(str(config.progress.file_path))
    status: dict[str, Any] = json.loads(path.read_text())["status"]
    return status


def _eval_set(path: Path) -> Path:
    rows: list[dict[str, Any]] = [
        {"prompt": f"What is the capital of {country}?", "reference": city} for country, city in CAPITALS
    ]
    rows.append(
        {
            "messages": [
                {"role": "user", "content": "What is the capital of Peru?"},
                {"role": "assistant", "content": "The capital of Peru is Lima."},
            ]
        }
    )
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_adapter_beats_the_base_on_held_out_data_and_the_gate_passes(
    make_config: Callable[..., TrainerConfig], tmp_path: Path
) -> None:
    config = make_config(
        dataset={"validation_split": 0.25},
        evaluation={"dataset_uri": f"file://{_eval_set(tmp_path / 'eval.jsonl')}", "scorer": "contains"},
    )
    metrics = run(config)
    evaluation = _status(config)["evaluation"]
    assert evaluation == metrics["evaluation"]
    assert evaluation["passed"] is True, evaluation
    assert evaluation["heldOutExamples"] == 4
    # The same held-out examples through the same weights with LoRA off and on.
    assert evaluation["adaptedLoss"] < evaluation["baseLoss"]
    assert evaluation["lossRatio"] == pytest.approx(evaluation["adaptedLoss"] / evaluation["baseLoss"], abs=1e-3)
    assert evaluation["basePerplexity"] > evaluation["adaptedPerplexity"] > 1
    assert evaluation["adaptedLoss"] == pytest.approx(metrics["eval_loss"], abs=1e-3)  # the trainer's own eval
    assert evaluation["examples"] == 7 and evaluation["scorer"] == "contains"
    assert 0 <= evaluation["score"] <= 1 and 0 <= evaluation["baseScore"] <= 1
    assert any("maxLossRatio 1" in reason for reason in evaluation["reasons"])


def test_thresholds_the_adapter_misses_fail_the_gate_with_the_numbers(
    make_config: Callable[..., TrainerConfig], tmp_path: Path
) -> None:
    config = make_config(
        hyperparameters={"max_steps": 4},
        dataset={"validation_split": 0.25},
        evaluation={
            "dataset_uri": f"file://{_eval_set(tmp_path / 'eval.jsonl')}",
            "scorer": "regex",
            "pattern": "^never-said$",
            "max_new_tokens": 4,
            "gate": {"max_loss_ratio": 0.01, "min_score": 0.5},
        },
    )
    run(config)  # training itself succeeds: the gate only decides about traffic
    evaluation = _status(config)["evaluation"]
    assert evaluation["passed"] is False
    assert evaluation["score"] == 0.0
    loss_reason, score_reason = evaluation["reasons"]
    assert "> maxLossRatio 0.01" in loss_reason and "worse than the base model" in loss_reason
    assert "score 0.000" in score_reason and "< minScore 0.5" in score_reason


def test_a_broken_eval_set_fails_before_training(make_config: Callable[..., TrainerConfig], tmp_path: Path) -> None:
    bad = tmp_path / "eval.jsonl"
    bad.write_text('{"prompt": "q", "reference": "a"}\nnot json\n{"messages": [{"role": "user", "content": "q"}]}\n')
    config = make_config(evaluation={"dataset_uri": f"file://{bad}"})
    with pytest.raises(DatasetError) as refused:
        run(config)
    assert "line 2: not JSON" in str(refused.value)
    assert "line 3: the last message must be the assistant's reference answer" in str(refused.value)
    out = Path(config.output.uri.removeprefix("file://"))
    assert not (out / "checkpoints").exists() or not any((out / "checkpoints").iterdir())


def test_the_gate_compares_with_the_stable_adapter_it_would_replace(
    make_config: Callable[..., TrainerConfig], tmp_path: Path
) -> None:
    """Issue 19: a candidate better than the base model but worse than the stable adapter is refused;
    one as good as the stable passes. Same held-out examples, paired, with a 95 % interval."""
    split = {"validation_split": 0.25}
    run(make_config(output="stable", dataset=split))
    incumbent = {"name": "bot.stable", "uri": f"file://{tmp_path / 'stable'}"}
    weak = make_config(
        output="weak", dataset=split, hyperparameters={"max_steps": 3}, evaluation={"incumbent": incumbent}
    )
    run(weak)
    evaluation = _status(weak)["evaluation"]
    assert evaluation["adaptedLoss"] < evaluation["baseLoss"], evaluation  # better than the base model ...
    assert evaluation["passed"] is False and evaluation["outcome"] == "Failed", evaluation  # ... not than stable
    assert evaluation["incumbent"] == "bot.stable"
    [held_out] = evaluation["comparisons"]
    assert held_out["metric"] == "heldOutLoss" and held_out["n"] == 4 and held_out["passed"] is False
    assert held_out["ratio"] > 1 and held_out["candidate"] > held_out["incumbent"]
    low, high = held_out["ci95"]
    assert low <= held_out["ratio"] <= high
    assert any("worse than the version it would replace" in reason for reason in evaluation["reasons"])
    print(f"\n[gate] weak candidate vs stable: {held_out}")
    same = make_config(output="same", dataset=split, evaluation={"incumbent": incumbent})  # the stable's own recipe
    run(same)
    again = _status(same)["evaluation"]
    assert again["passed"] is True and again["comparisons"][0]["ratio"] == pytest.approx(1.0, abs=1e-3), again
    missing = make_config(
        output="missing",
        dataset=split,
        evaluation={"incumbent": {"name": "bot.gone", "uri": f"file://{tmp_path}/gone"}},
    )
    run(missing)
    refused = _status(missing)["evaluation"]
    assert refused["passed"] is False and refused["outcome"] == "NotCompared"
    assert any("the incumbent bot.gone" in reason for reason in refused["reasons"])
