"""Atomic, resumable checkpoints under `<output>/checkpoints/step-NNNNNNNN/`.

A checkpoint is written into a hidden temporary directory beside its final place; the `COMPLETE`
marker is written last, and one `rename` makes it visible. A crash at any moment therefore leaves
either the previous checkpoints or the new, complete one, never a half-written directory that a
restart would trust. Only complete checkpoints are resumed from; the newest `keep` are kept.

Contents: `trainable.safetensors` (the parameters that train: LoRA matrices, or every weight for
full fine-tuning), `optimizer.pt` (keyed by parameter name, so any number of processes can load
it), `scheduler.pt`, `rng.pt` (CPU and CUDA generator states of every rank) and `state.json`
(step, epoch, position in the epoch, loss history, counters, the number of processes). With
several processes only rank 0 writes and reads these files; the state is gathered to it and
broadcast from it (data_parallel.py).
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

COMPLETE = "COMPLETE"
FORMAT = 2  # 2: optimizer state keyed by parameter name, one RNG state per rank
DIRNAME = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def checkpoint_dir(output_dir: Path) -> Path:
    """The folder holding every checkpoint of a run."""
    return output_dir / DIRNAME


def complete_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every complete checkpoint, oldest first."""
    root = checkpoint_dir(output_dir)
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        match = _STEP_DIR.match(entry.name)
        if match and (entry / COMPLETE).is_file():
            found.append((int(match.group(1)), entry))
    return sorted(found)


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    found = complete_checkpoints(output_dir)
    return found[-1][1] if found else None


def remove_partial(output_dir: Path) -> None:
    """Delete temporary directories left by a run that died while saving."""
    root = checkpoint_dir(output_dir)
    if root.is_dir():
        for entry in root.iterdir():
            if entry.name.startswith(".tmp-"):
                shutil.rmtree(entry, ignore_errors=True)


def save_checkpoint(
    output_dir: Path,
    step: int,
    *,
    tensors: dict[str, torch.Tensor],
    optimizer_state: dict[str, Any],
    scheduler_state: dict[str, Any],
    rng: list[dict[str, Any]],
    state: dict[str, Any],
    keep: int,
) -> Path:
    """Write a complete checkpoint for `step`, then prune all but the newest `keep` (rank 0 only).

    `tensors` are the trainable parameters by name, `optimizer_state` is keyed by parameter name
    (torch.distributed.checkpoint.state_dict), `rng` holds one RNG state per rank.
    """
    from safetensors.torch import save_file

    root = checkpoint_dir(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({n: t.detach().to("cpu").contiguous() for n, t in tensors.items()}, str(tmp / "trainable.safetensors"))
    torch.save(optimizer_state, tmp / "optimizer.pt")
    torch.save(scheduler_state, tmp / "scheduler.pt")
    torch.save({"ranks": rng}, tmp / "rng.pt")
    _write_json(tmp / "state.json", {**state, "format": FORMAT})
    _write_json(tmp / COMPLETE, {"step": step})
    _fsync_dir(tmp)
    if final.exists():  # the same step saved by an earlier attempt: replace it
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(root)
    for _, old in complete_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


@dataclass
class Checkpoint:
    """What a checkpoint holds, as read from disk (on rank 0)."""

    tensors: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    scheduler_state: dict[str, Any]
    rng: list[dict[str, Any]]  # per rank; one entry for checkpoints written before format 2
    state: dict[str, Any]

    @property
    def legacy_optimizer(self) -> bool:
        """An optimizer state keyed by parameter index (format 1: one process only)."""
        groups = self.optimizer_state.get("param_groups") or [{}]
        return any(isinstance(p, int) for p in groups[0].get("params", []))


def read_checkpoint(path: Path) -> Checkpoint:
    """Read every file of a complete checkpoint."""
    from safetensors.torch import load_file

    rng = torch.load(path / "rng.pt", map_location="cpu", weights_only=True)
    return Checkpoint(
        tensors=load_file(str(path / "trainable.safetensors")),
        optimizer_state=torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
        scheduler_state=torch.load(path / "scheduler.pt", map_location="cpu", weights_only=True),
        rng=list(rng["ranks"]) if "ranks" in rng else [rng],
        state=json.loads((path / "state.json").read_text()),
    )


def rng_state() -> dict[str, Any]:
    """This process's RNG states (CPU, and the CUDA devices when there are any)."""
    return _rng_state()


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` returned."""
    _set_rng_state(state)


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(payload, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
