"""The real trainer on a feedback sink (the files the serving ingress writes): it trains on the rated,
corrected answers, and an empty selection fails with reason NoMatchingFeedback in the termination log."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from bigmodel_training.cli import main
from bigmodel_training.config import TrainerConfig
from bigmodel_training.errors import EXIT_DATASET, TERMINATION_LOG_ENV
from bigmodel_training.runner import run

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi"), ("Canada", "Ottawa"), ("Norway", "Oslo"),
    ("Chile", "Santiago"), ("India", "New Delhi"), ("Cuba", "Havana"), ("Greece", "Athens"), ("Ireland", "Dublin"),
    ("Poland", "Warsaw"),
]  # fmt: skip


def _sink(directory: Path) -> Path:
    """Feedback records as the ingress writes them: every other answer wrong and corrected, rated 1..5."""
    directory.mkdir(parents=True)
    lines = []
    for index, (country, city) in enumerate(CAPITALS):
        wrong = index % 2 == 0
        record = {
            "messages": [
                {"role": "user", "content": f"What is the capital of {country}? Mail me at user{index}@example.com"},
                {"role": "assistant", "content": "I do not know." if wrong else f"The capital of {country} is {city}."},
            ],
            "rating": 5 if index % 4 != 3 else 1,
            "correction": f"The capital of {country} is {city}." if wrong else None,
            "model": "tiny-llama",
            "key": "alice",
            "id": f"chatcmpl-{index}",
            "ts": f"2026-11-30T05:{index:02d}:00.000Z",
        }
        lines.append(json.dumps(record))
    (directory / "feedback-2026-11-30.jsonl").write_text("\n".join(lines) + "\n")
    return directory


def test_training_on_feedback(make_config: Callable[..., TrainerConfig], tmp_path: Path) -> None:
    sink = _sink(tmp_path / "sink")
    config = make_config(
        "from-feedback",
        dataset={"uri": f"file://{sink}", "feedback": {"min_rating": 4}},
        hyperparameters={"max_steps": 3},
    )
    metrics = run(config)
    assert metrics["steps"] == 3
    output = Path(config.output.uri.removeprefix("file://"))
    assert (output / "adapter_config.json").is_file()


def test_no_matching_feedback_fails_with_its_reason(
    make_config: Callable[..., TrainerConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sink = _sink(tmp_path / "sink")
    config = make_config("nothing", dataset={"uri": f"file://{sink}", "feedback": {"since": "2027-01-01T00:00:00Z"}})
    config_file = tmp_path / "config.json"
    config_file.write_text(config.to_json())
    termination = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(termination))
    assert main(["--config", str(config_file)]) == EXIT_DATASET
    report = json.loads(termination.read_text())
    assert report["reason"] == "NoMatchingFeedback"
    assert "no feedback records match" in report["message"] and "16 record(s)" in report["message"]
