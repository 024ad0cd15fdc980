"""Usage and cost in a BigModel's status.

`status.usage` is written by the serving application (its quota actor: tokens per key and per model, and
the seconds during which at least one request was in flight); `status.cost` is the operator's account
(status/cost_accounting.py): replica GPU- or CPU-seconds from the pods, idle seconds, tokens and prices.
"""

from __future__ import annotations

from pydantic import Field

from bigmodel_operator.api.base import ApiModel

MAX_NAMED = 256  # keys / models tracked by name in status


class TokenCounts(ApiModel):
    """Requests and tokens of one API key or model."""

    requests: int | None = Field(default=None, ge=0, description="Requests answered.")
    prompt_tokens: int | None = Field(default=None, ge=0, description="Prompt (input) tokens.")
    completion_tokens: int | None = Field(default=None, ge=0, description="Completion (output) tokens.")
    cost: float | None = Field(
        default=None, description="Operator: the model's cost attributed by this key's (model's) share of tokens."
    )


class UsageReport(ApiModel):
    """Counters of the serving application since `since` (written by the application, read by the operator)."""

    since: str | None = Field(default=None, max_length=40, description="When these counters started.")
    reported_at: str | None = Field(default=None, max_length=40, description="When this report was written.")
    requests: int | None = Field(default=None, ge=0, description="Requests answered.")
    prompt_tokens: int | None = Field(default=None, ge=0, description="Prompt tokens.")
    completion_tokens: int | None = Field(default=None, ge=0, description="Completion tokens.")
    busy_seconds: float | None = Field(
        default=None, ge=0, description="Seconds during which at least one generation request was in flight."
    )
    by_key: dict[str, TokenCounts] | None = Field(default=None, max_length=MAX_NAMED, description="By API key name.")
    by_model: dict[str, TokenCounts] | None = Field(
        default=None,
        max_length=MAX_NAMED,
        description="By model clients called (the base model or `<model>:<adapter>`).",
    )


class CostTotals(ApiModel):
    """Resource use, tokens and cost over a period."""

    since: str | None = Field(default=None, max_length=40, description="Start of the period.")
    gpu_seconds: float | None = Field(default=None, description="GPU-seconds held by the model's replica pods.")
    idle_gpu_seconds: float | None = Field(
        default=None, description="Of those, GPU-seconds while no request was in flight."
    )
    busy_gpu_seconds: float | None = Field(
        default=None, description="Of those, GPU-seconds while at least one request was in flight."
    )
    cpu_seconds: float | None = Field(
        default=None, description="CPU-core-seconds held by the replica pods (the priced resource of a CPU model)."
    )
    busy_cpu_seconds: float | None = Field(default=None, description="Of those, while requests were in flight.")
    idle_cpu_seconds: float | None = Field(default=None, description="Of those, while no request was in flight.")
    prompt_tokens: int | None = Field(default=None, description="Prompt tokens.")
    completion_tokens: int | None = Field(default=None, description="Completion tokens.")
    cost: float | None = Field(default=None, description="What the replicas cost at the configured price.")
    cost_per_million_tokens: float | None = Field(
        default=None, description="cost / (prompt + completion tokens) × 1,000,000; empty without tokens."
    )


class HourBucket(ApiModel):
    """One hour of the rolling window (the operator's bookkeeping)."""

    hour: str = Field(max_length=40, description="Start of the hour (UTC).")
    gpu_seconds: float | None = None
    busy_gpu_seconds: float | None = None
    cpu_seconds: float | None = None
    busy_cpu_seconds: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


class CostStatus(ApiModel):
    """The operator's account of what this model costs."""

    currency: str | None = Field(default=None, max_length=16, description="Currency of the prices (chart).")
    price_per_hour: float | None = Field(
        default=None,
        description="Price of one GPU-hour of this model's GPU product, or of one CPU-core-hour on CPU (chart).",
    )
    priced_resource: str | None = Field(default=None, max_length=256, description="What the price is for.")
    total: CostTotals | None = Field(default=None, description="Since the BigModel was first accounted.")
    window: CostTotals | None = Field(default=None, description="The last `windowHours` hours (chart).")
    window_hours: int | None = Field(default=None, description="Length of the window.")
    by_key: dict[str, TokenCounts] | None = Field(default=None, max_length=MAX_NAMED, description="By API key name.")
    by_model: dict[str, TokenCounts] | None = Field(
        default=None, max_length=MAX_NAMED, description="By model clients called (base model, adapters)."
    )
    hours: list[HourBucket] | None = Field(default=None, max_length=168, description="Hourly buckets of the window.")
    accrued_until: str | None = Field(default=None, max_length=40, description="Pods are accounted up to here.")
    usage_seen: UsageReport | None = Field(
        default=None, description="The last status.usage accounted (so a report is counted once)."
    )
