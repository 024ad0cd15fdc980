"""Units, number formatting and the shared pydantic base for plan models.

Sizes are computed in bytes (integers) and shown in GiB (2**30 bytes) rounded to two decimals.
Parameter counts are shown in decimal units ("8.03B"), the way model cards state them.
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

GIB = 2**30
"""Bytes in one GiB."""


def camel_alias(name: str) -> str:
    """snake_case → camelCase, spelling the unit as Kubernetes users read it (``weight_gib`` →
    ``weightGiB``)."""
    return to_camel(name).replace("Gib", "GiB")


class PlanModel(BaseModel):
    """Base for the plan models that end up in CRD status: camelCase aliases, strict keys."""

    model_config = ConfigDict(
        alias_generator=camel_alias,
        populate_by_name=True,
        extra="forbid",
        protected_namespaces=(),
    )


def gib(num_bytes: float) -> float:
    """Bytes → GiB rounded to 2 decimals (for display fields)."""
    return round(num_bytes / GIB, 2)


def human_params(count: int) -> str:
    """Parameter count in decimal units: 8_030_261_248 → ``"8.03B"``, 41_943_040 → ``"41.94M"``."""
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= scale:
            return f"{count / scale:.2f}{unit}"
    return str(count)


def ceil_div(a: int, b: int) -> int:
    """Integer ceiling division."""
    return -(-a // b)


def floor_to(value: float, step: int) -> int:
    """Round ``value`` down to a multiple of ``step`` (at least 0)."""
    return max(0, math.floor(value / step) * step)
