"""Errors raised by the planner, each with the condition reason it becomes.

``ModelConfigError``: the model's config.json cannot be understood; the model may still be deployed
without a plan (reason ``ModelConfigUnavailable``). ``ModelConfigOutOfBoundsError``: a number in it is
absurd (10^15 layers): refused, nothing deployed. ``PlanningError``: the spec asks for something
vLLM or the trainer would reject for this model; nothing is deployed, and ``reason`` says which kind
(``InvalidParallelism``, ``QuantizationMismatch``, ``MaxModelLenTooLong``, else ``InvalidEngineArgs``).
A model that is merely too large is *not* an error: the plans then carry ``fits=False`` and a reason
(``ModelTooLargeForGPU``).
"""

from __future__ import annotations

INVALID_ENGINE_ARGS = "InvalidEngineArgs"
INVALID_PARALLELISM = "InvalidParallelism"
QUANTIZATION_MISMATCH = "QuantizationMismatch"
MAX_MODEL_LEN_TOO_LONG = "MaxModelLenTooLong"
MODEL_CONFIG_OUT_OF_BOUNDS = "ModelConfigOutOfBounds"


class ModelConfigError(ValueError):
    """A config.json lacks an essential key or has a value of the wrong type."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class ModelConfigOutOfBoundsError(ModelConfigError):
    """A config.json number beyond any real model (planning refuses it instead of computing with it)."""

    reason = MODEL_CONFIG_OUT_OF_BOUNDS


class PlanningError(ValueError):
    """Settings that vLLM or the trainer would reject (e.g. a tensor parallel size that does not
    divide the attention heads)."""

    def __init__(self, message: str, *, reason: str = INVALID_ENGINE_ARGS) -> None:
        super().__init__(message)
        self.reason = reason
