"""The gate's comparison with the incumbent: the version this adapter would replace, on the same examples.

The incumbent is the BigModel's stable adapter for the same name (the operator renders it into
`evaluation.incumbent`), else the base model. Both are measured on the same held-out examples, one
example at a time, so the comparison is paired:

- held-out loss: token-weighted mean loss of each model, their ratio candidate / incumbent, and a 95 %
  confidence interval of the ratio (delta method over the examples' summed losses);
- eval set (when named): the share of prompts each model answers to the scorer's liking, their
  difference, and a 95 % interval of the paired difference.

The rows of the candidate's held-out split may have been training rows of the incumbent (same
feedback, another split): the incumbent then looks better than it is on them, so a candidate that
still beats it is better. An eval set the user keeps apart from training data, fixed across versions,
is the fair comparison; name one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

Z95 = 1.96
INCUMBENT_ADAPTER = "incumbent"


@dataclass
class Comparison:
    """One metric, candidate against incumbent, for status.evaluation.comparisons."""

    metric: str  # heldOutLoss | evalScore
    candidate: float
    incumbent: float
    n: int
    value: float  # heldOutLoss: candidate / incumbent; evalScore: candidate - incumbent
    low: float | None
    high: float | None
    passed: bool

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "metric": self.metric,
            "candidate": round(self.candidate, 4),
            "incumbent": round(self.incumbent, 4),
            "n": self.n,
            "ratio" if self.metric == "heldOutLoss" else "difference": round(self.value, 4),
            "passed": self.passed,
        }
        if self.low is not None and self.high is not None:
            out["ci95"] = [round(self.low, 4), round(self.high, 4)]
        return out

    def describe(self, incumbent: str) -> str:
        interval = f", 95% CI [{self.low:.3f}, {self.high:.3f}]" if self.low is not None else ""
        if self.metric == "heldOutLoss":
            return (
                f"held-out loss {self.candidate:.4f} vs incumbent {incumbent} {self.incumbent:.4f} on {self.n} "
                f"example(s): ratio {self.value:.3f}{interval}"
            )
        return (
            f"eval set score {self.candidate:.3f} vs incumbent {incumbent} {self.incumbent:.3f} on {self.n} "
            f"example(s): difference {self.value:+.3f}{interval}"
        )


def loss_ratio(candidate: list[tuple[float, int]], incumbent: list[tuple[float, int]]) -> tuple[float, float | None]:
    """(ratio of token-mean losses, its standard error) from per-example (summed loss, tokens), paired."""
    total_c = sum(loss for loss, _ in candidate)
    total_i = sum(loss for loss, _ in incumbent)
    n = len(candidate)
    if total_i <= 0 or n == 0:
        return math.inf, None
    ratio = total_c / total_i
    if n < 2:
        return ratio, None
    residuals = [c - ratio * i for (c, _), (i, _) in zip(candidate, incumbent, strict=True)]
    return ratio, math.sqrt(n / (n - 1) * sum(d * d for d in residuals)) / total_i


def paired_difference(candidate: list[bool], incumbent: list[bool]) -> tuple[float, float | None]:
    """(difference of the pass shares, its standard error) over the same prompts."""
    n = len(candidate)
    if n == 0:
        return 0.0, None
    differences = [float(c) - float(i) for c, i in zip(candidate, incumbent, strict=True)]
    mean = sum(differences) / n
    if n < 2:
        return mean, None
    variance = sum((d - mean) ** 2 for d in differences) / (n - 1)
    return mean, math.sqrt(variance / n)


def compare_losses(
    candidate: list[tuple[float, int]], incumbent: list[tuple[float, int]], max_ratio: float
) -> Comparison:
    ratio, error = loss_ratio(candidate, incumbent)
    tokens = sum(t for _, t in candidate) or 1
    low, high = (None, None) if error is None else (ratio - Z95 * error, ratio + Z95 * error)
    return Comparison(
        "heldOutLoss",
        sum(loss for loss, _ in candidate) / tokens,
        sum(loss for loss, _ in incumbent) / tokens,
        len(candidate),
        ratio,
        low,
        high,
        ratio <= max_ratio,
    )


def compare_scores(candidate: list[bool], incumbent: list[bool], max_drop: float = 0.0) -> Comparison:
    difference, error = paired_difference(candidate, incumbent)
    n = len(candidate) or 1
    low, high = (None, None) if error is None else (difference - Z95 * error, difference + Z95 * error)
    return Comparison(
        "evalScore", sum(candidate) / n, sum(incumbent) / n, len(candidate), difference, low, high,
        difference >= -max_drop,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# running it (torch)
# ----------------------------------------------------------------------------------------------


def per_example_losses(trainer: Any) -> list[tuple[float, int]]:
    """(summed token loss, loss tokens) of each held-out example, one forward pass each (no packing)."""
    import torch

    from bigmodel_training.packing import collate

    out = []
    was_training = trainer.model.training
    trainer.model.eval()
    try:
        with torch.no_grad():
            for index in range(len(trainer.data.eval)):
                batch = collate(trainer.data.eval, [[index]], trainer.pad_id, False).to(trainer.runtime.device)
                out.append((float(trainer.loss_sum(batch).item()), batch.loss_tokens))
    finally:
        trainer.model.train(was_training)
    return out


def incumbent_dir(uri: str, local_path: str | None, scratch: Path) -> Path:
    """A local directory with the incumbent adapter's files."""
    from bigmodel_training.sources import local_path_of

    path = Path(local_path) if local_path else local_path_of(uri)
    if path is not None:
        return path
    if uri.startswith("s3://"):
        from bigmodel_training import storage

        return storage.download_prefix(uri, scratch / "incumbent", ["adapter_config.json", "*.safetensors", "*.bin"])
    raise ValueError(f"incumbent adapter {uri}: unsupported location")


class IncumbentLoaded:
    """`with IncumbentLoaded(model, path):` the PEFT model computes as the incumbent adapter."""

    def __init__(self, model: Any, path: Path) -> None:
        self.model = model
        self.path = path
        self.previous = "default"

    def __enter__(self) -> Any:
        self.previous = getattr(self.model, "active_adapter", "default") or "default"
        self.model.load_adapter(str(self.path), adapter_name=INCUMBENT_ADAPTER, is_trainable=False)
        self.model.set_adapter(INCUMBENT_ADAPTER)
        return self.model

    def __exit__(self, *exc: Any) -> None:
        self.model.set_adapter(self.previous)
        self.model.delete_adapter(INCUMBENT_ADAPTER)
