"""Several processes on the CPU (gloo), started by `python -m bigmodel_training launch` (torchrun):
2 and 4 processes give the loss curve of 1 process on the same data and seed, with DDP and FSDP2;
SIGTERM stops every rank after the same step with one checkpoint, and a relaunch resumes it.

Equal global batch: one process with gradient accumulation 4 = two with 2 = four with 1 (docs/training.md).
Measured agreement: the losses are equal to the 6 decimals metrics.json keeps (max |Δ| 1e-6, the rounding);
the test allows TOLERANCE.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bigmodel_training.checkpoint import complete_checkpoints
from bigmodel_training.config import TrainerConfig
from bigmodel_training.errors import EXIT_TERMINATED
from bigmodel_training.runner import run

TOLERANCE = 1e-4  # absolute, per step, on the token-mean loss (~6.5 → 5.4 over the run)
TIMEOUT_S = 900


def _settings(accumulation: int, strategy: str = "auto", steps: int = 12) -> dict[str, Any]:
    return {
        "dataset": {"validation_split": 0.2},
        "hyperparameters": {"max_steps": steps, "batch_size": 1, "gradient_accumulation_steps": accumulation},
        "checkpoint": {"every_steps": 4, "keep": 2},
        "distributed": {"strategy": strategy},
    }


def _launch(config: TrainerConfig, workdir: Path, processes: int) -> subprocess.Popen[str]:
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / "config.json"
    path.write_text(config.to_json())
    env = {**os.environ, "BIGMODEL_TERMINATION_LOG": str(workdir / "termination.json"), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "bigmodel_training", "launch", "--standalone", f"--nproc-per-node={processes}",
        "-m", "bigmodel_training", "--config", str(path),
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip


def _finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        output, _ = process.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
    return process.returncode, output


def _metrics(config: TrainerConfig) -> dict[str, Any]:
    out = Path(config.output.uri.removeprefix("file://"))
    metrics: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    return metrics


def _losses(metrics: dict[str, Any]) -> list[float]:
    return [h["loss"] for h in metrics["loss_curve"]]


def test_two_and_four_processes_give_the_loss_curve_of_one(
    make_config: Callable[..., TrainerConfig], tmp_path: Path
) -> None:
    one = run(make_config("one", **_settings(4)))
    assert one["processes"] == 1 and one["strategy"] == "single"
    runs = {"ddp-2": (2, 2, "ddp"), "ddp-4": (4, 1, "ddp"), "fsdp-2": (2, 2, "fsdp")}
    for name, (processes, accumulation, strategy) in runs.items():
        config = make_config(name, **_settings(accumulation, strategy))
        code, output = _finish(_launch(config, tmp_path / name, processes))
        assert code == 0, output[-4000:]
        metrics = _metrics(config)
        assert (metrics["processes"], metrics["strategy"]) == (processes, strategy)
        assert _losses(metrics) == pytest.approx(_losses(one), abs=TOLERANCE), name
        assert metrics["eval_loss"] == pytest.approx(one["eval_loss"], abs=TOLERANCE), name
        assert metrics["evaluation"]["passed"] == one["evaluation"]["passed"]
        out = Path(config.output.uri.removeprefix("file://"))
        assert (out / "adapter_model.safetensors").is_file() and (out / "adapter_config.json").is_file()
        assert [step for step, _ in complete_checkpoints(out)] == [8, 12]


def test_sigterm_stops_every_rank_at_one_step_and_a_relaunch_resumes(
    make_config: Callable[..., TrainerConfig], tmp_path: Path, wait_for_step: Callable[..., None]
) -> None:
    reference = run(make_config("reference", **_settings(2, steps=40)))
    config = make_config("preempted", **{**_settings(1, steps=40), "checkpoint": {"every_steps": 1000, "keep": 2}})
    out = Path(config.output.uri.removeprefix("file://"))
    process = _launch(config, tmp_path / "preempted", 2)
    wait_for_step(out, process, 3, TIMEOUT_S)
    os.kill(process.pid, signal.SIGTERM)  # the launcher (torchrun) forwards it to both workers
    code, output = _finish(process)
    assert code == EXIT_TERMINATED, output[-4000:]
    saved = [step for step, _ in complete_checkpoints(out)]
    assert len(saved) == 1 and 3 <= saved[0] < 40, saved  # one checkpoint, of the step both ranks agreed on
    termination = json.loads((tmp_path / "preempted" / "termination.json").read_text())
    assert "SIGTERM" in termination["message"]

    code, output = _finish(_launch(config, tmp_path / "preempted", 2))
    assert code == 0, output[-4000:]
    resumed = _metrics(config)
    assert resumed["resumed_from_step"] == saved[0]
    assert [h["step"] for h in resumed["loss_curve"]] == list(range(1, 41))
    assert _losses(resumed) == pytest.approx(_losses(reference), abs=TOLERANCE)


def test_a_dataset_defect_on_every_rank_is_the_pods_reason_and_exit_code(
    make_config: Callable[..., TrainerConfig], write_chat_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    bad = write_chat_dataset(tmp_path / "bad.jsonl", extra=[{"messages": [{"role": "user", "content": "hi"}]}])
    config = make_config("bad", dataset={"uri": f"file://{bad}"})
    code, output = _finish(_launch(config, tmp_path / "bad", 2))
    termination = json.loads((tmp_path / "bad" / "termination.json").read_text())
    assert (code, termination["reason"]) == (3, "DatasetInvalid"), output[-3000:]
    assert "line 17: role_order" in termination["message"]
