"""Errors raised by the planner.

``ModelConfigError``: the model's config.json cannot be understood (a condition such as
``InvalidModelConfig``). ``PlanningError``: the engine or training settings are invalid for this
model (``InvalidEngineArgs``). A model that is merely too large is *not* an error: the plans then
carry ``fits=False`` and a reason (``ModelTooLargeForGPU``).
"""

from __future__ import annotations


class ModelConfigError(ValueError):
    """A config.json lacks an essential key or has a value of the wrong type."""

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class PlanningError(ValueError):
    """Settings that vLLM or the trainer would reject (e.g. a tensor parallel size that does not
    divide the attention heads)."""
