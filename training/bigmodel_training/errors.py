"""Failure reasons, exit codes and the termination message the operator reads.

On failure the trainer writes one line of JSON, `{"reason": ..., "message": ...}`, to the pod's
termination message path and exits with a code that names the failure class. The operator copies
`reason` into the FineTuneJob's `Failed` condition.

| exit code | reason          | when |
|-----------|-----------------|------|
| 0         | -               | training finished, output written |
| 1         | Error           | anything unexpected (a traceback is in the pod log) |
| 2         | Error           | invalid config file or command line |
| 3         | DatasetInvalid  | the dataset failed validation (the message lists the first defects) |
| 4         | OutOfMemory     | the accelerator (or host) ran out of memory |
| 5         | Error           | the method cannot run here (e.g. QLoRA without a CUDA GPU) |
| 6         | Error           | the base model, dataset or output location could not be read or written |
| 7         | LossNotFinite   | the loss or gradient norm became NaN or infinite (the last checkpoint is kept) |
| 143       | Error           | stopped by SIGTERM (preemption) after saving a checkpoint; a retry resumes |
"""

from __future__ import annotations

import json
import os
from pathlib import Path

TERMINATION_LOG_ENV = "BIGMODEL_TERMINATION_LOG"
# Set by `launch` (torchrun): each worker reports into <dir>/rank-<RANK>.json, the launcher picks one.
RANK_REPORTS_ENV = "BIGMODEL_RANK_REPORTS"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"
# Kubernetes keeps at most 4096 bytes of a termination message; stay well under it.
MAX_MESSAGE_BYTES = 3500

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
EXIT_DATASET = 3
EXIT_OOM = 4
EXIT_UNSUPPORTED = 5
EXIT_IO = 6
EXIT_NOT_FINITE = 7
EXIT_TERMINATED = 143

REASON_DATASET_INVALID = "DatasetInvalid"
REASON_OUT_OF_MEMORY = "OutOfMemory"
REASON_LOSS_NOT_FINITE = "LossNotFinite"
REASON_ERROR = "Error"


class TrainerError(Exception):
    """A failure with a reason for the operator and an exit code for the pod."""

    reason = REASON_ERROR
    exit_code = EXIT_ERROR


class ConfigError(TrainerError):
    """The config file or command line is invalid."""

    exit_code = EXIT_CONFIG


class DatasetError(TrainerError):
    """The dataset has defects; the message is the report."""

    reason = REASON_DATASET_INVALID
    exit_code = EXIT_DATASET


class TrainerOutOfMemoryError(TrainerError):
    """The accelerator ran out of memory."""

    reason = REASON_OUT_OF_MEMORY
    exit_code = EXIT_OOM


class UnsupportedError(TrainerError):
    """The requested method cannot run on this machine."""

    exit_code = EXIT_UNSUPPORTED


class SourceError(TrainerError):
    """A model, dataset or output location could not be read or written."""

    exit_code = EXIT_IO


class NonFiniteLossError(TrainerError):
    """The loss or the gradient norm is NaN or infinite: training diverged; retrying would repeat it."""

    reason = REASON_LOSS_NOT_FINITE
    exit_code = EXIT_NOT_FINITE


class TerminatedError(TrainerError):
    """SIGTERM arrived; a checkpoint was saved and the next attempt resumes from it."""

    exit_code = EXIT_TERMINATED


def termination_log_path() -> Path:
    """The file the kubelet reads as the container's termination message."""
    return Path(os.environ.get(TERMINATION_LOG_ENV, DEFAULT_TERMINATION_LOG))


def write_termination_message(reason: str, message: str, exit_code: int | None = None) -> None:
    """Write `{"reason", "message"}` as one JSON line; never raise (the pod is failing already).

    A worker under `launch` (torchrun) writes its report, with `exit_code`, to its own file in
    $BIGMODEL_RANK_REPORTS instead; the launcher writes the termination message (launch.py).
    """
    encoded = message.encode("utf-8")
    if len(encoded) > MAX_MESSAGE_BYTES:
        message = encoded[: MAX_MESSAGE_BYTES - 3].decode("utf-8", errors="ignore") + "..."
    payload: dict[str, object] = {"reason": reason, "message": message}
    path = termination_log_path()
    reports, rank = os.environ.get(RANK_REPORTS_ENV), os.environ.get("RANK")
    if reports and rank is not None:
        import time

        payload.update(exit_code=exit_code, rank=int(rank), time=time.time())
        path = Path(reports) / f"rank-{rank}.json"
    line = json.dumps(payload, ensure_ascii=False)
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(line + "\n")
    except OSError:
        pass
