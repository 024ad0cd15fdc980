"""What a BigModel costs (pure): replica pods' GPU- or CPU-seconds, idle time, tokens, price.

Sources:
- the Ray worker pods (the engine replicas' pods; the head is left out: it is the same for every model
  and keeps running at zero): each holds its GPUs (or CPU cores, from its request) from the moment the
  scheduler bound it until it ended; the operator accounts every interval up to `accruedUntil`, so an
  interval is counted once however often the reconcile runs, and a restart continues from there;
- `status.usage`, reported by the serving application every 30 s: tokens and requests by key and by
  model, and `busySeconds`, wall-clock seconds with at least one request in flight. Counters restart
  with the application's quota actor (a new `since`); `usageSeen` is the last report accounted, so each
  report adds only its difference.

Idle = held − busy, where busy GPU-seconds are the new busy seconds × the GPUs held when the report
arrives: "idle" is model-level (no request anywhere); with several replicas a replica idling while
another serves counts as busy. Cost = seconds / 3600 × the price per GPU-hour of the model's GPU product
(per CPU-core-hour on CPU), from the chart's `operatorConfig.prices`. Cost per million tokens =
cost / (prompt + completion tokens) × 10^6. By key and by model, cost is shared out by tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from bigmodel_operator.status.startup_phases import PodRecord, parse_time, rfc3339

ACCRUAL_PERIOD_S = 300.0
"""With nothing new (no pod started or ended, no usage report), the account moves on at most this often,
so a resync does not rewrite the status of every running model."""
SECONDS_FIELDS = ("gpuSeconds", "busyGpuSeconds", "cpuSeconds", "busyCpuSeconds")
TOKEN_FIELDS = ("promptTokens", "completionTokens")


@dataclass(frozen=True)
class Pricing:
    """The price of the model's priced resource: GPU-hours of its product, or CPU-core-hours on CPU."""

    on_gpu: bool
    price_per_hour: float | None
    currency: str
    resource: str  # e.g. "GPU-hour of NVIDIA-H100-80GB-HBM3", "CPU-core-hour"
    window_hours: int = 24


def _hour(when: datetime) -> datetime:
    return when.replace(minute=0, second=0, microsecond=0)


def split_by_hour(start: datetime, end: datetime) -> list[tuple[datetime, float]]:
    """(hour, seconds) of the interval [start, end) in each UTC hour it touches."""
    out = []
    cursor = start
    while cursor < end:
        boundary = _hour(cursor) + timedelta(hours=1)
        stop = min(boundary, end)
        out.append((_hour(cursor), (stop - cursor).total_seconds()))
        cursor = stop
    return out


def pod_seconds(pods: list[PodRecord], since: datetime | None, now: datetime) -> dict[datetime, tuple[float, float]]:
    """Per hour: (GPU-seconds, CPU-core-seconds) the worker pods held in (since, now]."""
    hours: dict[datetime, tuple[float, float]] = {}
    for pod in pods:
        if pod.node_type == "head":
            continue
        held_from = pod.scheduled or pod.started
        if held_from is None:
            continue  # never bound to a node: it held nothing
        start = max(held_from, since) if since else held_from
        end = min(pod.ended or now, now)
        for hour, seconds in split_by_hour(start, end):
            gpu, cpu = hours.get(hour, (0.0, 0.0))
            hours[hour] = (gpu + seconds * pod.gpus, cpu + seconds * pod.cpus)
    return hours


def _count(value: object) -> int:
    return int(value) if isinstance(value, int | float) else 0


def usage_delta(seen: dict[str, Any] | None, usage: dict[str, Any] | None) -> dict[str, Any]:
    """What `usage` adds to what was accounted (`seen`): all of it when the counters restarted."""
    if not usage:
        return {}
    restarted = not seen or seen.get("since") != usage.get("since")
    base = {} if restarted else (seen or {})
    delta: dict[str, Any] = {
        key: max(0, _count(usage.get(key)) - _count(base.get(key))) for key in ("requests", *TOKEN_FIELDS)
    }
    delta["busySeconds"] = max(0.0, float(usage.get("busySeconds") or 0) - float(base.get("busySeconds") or 0))
    for group in ("byKey", "byModel"):
        now_counts, before = usage.get(group) or {}, base.get(group) or {}
        delta[group] = {
            name: {
                key: max(0, _count(counts.get(key)) - _count((before.get(name) or {}).get(key)))
                for key in ("requests", *TOKEN_FIELDS)
            }
            for name, counts in now_counts.items()
        }
    return delta


@dataclass(frozen=True)
class AccrualInputs:
    """What the account moves on from: the last `status.cost`, the replica pods, the latest usage report, now."""

    previous: dict[str, Any] | None
    pods: list[PodRecord]
    usage: dict[str, Any] | None
    now: datetime


def accrual_due(inputs: AccrualInputs, period_s: float = ACCRUAL_PERIOD_S) -> bool:
    """Whether to move the account on now: something new happened, or a period passed with pods running."""
    previous, pods, usage, now = inputs.previous, inputs.pods, inputs.usage, inputs.now
    workers = [p for p in pods if p.node_type != "head"]
    accrued = parse_time((previous or {}).get("accruedUntil"))
    if accrued is None:
        return bool(workers) or bool(usage)
    seen = (previous or {}).get("usageSeen") or {}
    if usage and (usage.get("since"), usage.get("reportedAt")) != (seen.get("since"), seen.get("reportedAt")):
        return True
    for pod in workers:
        for moment in (pod.scheduled, pod.ended):
            if moment is not None and moment > accrued:
                return True
    held = any(p.ended is None and (p.scheduled or p.started) for p in workers)
    return held and (now - accrued).total_seconds() >= period_s


def _add_counts(into: dict[str, dict[str, int]], delta: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    out = {name: dict(counts) for name, counts in into.items()}
    for name, counts in delta.items():
        entry = out.setdefault(name, {})
        for key, value in counts.items():
            entry[key] = _count(entry.get(key)) + value
    return out


def _with_cost(totals: dict[str, Any], pricing: Pricing) -> dict[str, Any]:
    """Idle seconds, cost and cost per million tokens of a totals block."""
    out = dict(totals)
    for held, busy, idle in (
        ("gpuSeconds", "busyGpuSeconds", "idleGpuSeconds"),
        ("cpuSeconds", "busyCpuSeconds", "idleCpuSeconds"),
    ):
        out[busy] = round(min(float(out.get(busy) or 0), float(out.get(held) or 0)), 1)
        out[held] = round(float(out.get(held) or 0), 1)
        out[idle] = round(max(0.0, out[held] - out[busy]), 1)
    if pricing.price_per_hour is not None:
        seconds = out["gpuSeconds"] if pricing.on_gpu else out["cpuSeconds"]
        out["cost"] = round(seconds / 3600 * pricing.price_per_hour, 6)
        tokens = _count(out.get("promptTokens")) + _count(out.get("completionTokens"))
        if tokens:
            out["costPerMillionTokens"] = round(out["cost"] / tokens * 1_000_000, 6)
    return out


def _shares(counts: dict[str, dict[str, int]], total_cost: float | None) -> dict[str, dict[str, Any]]:
    tokens = {name: _count(c.get("promptTokens")) + _count(c.get("completionTokens")) for name, c in counts.items()}
    everything = sum(tokens.values())
    out: dict[str, dict[str, Any]] = {}
    for name, entry in counts.items():
        item: dict[str, Any] = dict(entry)
        if total_cost is not None and everything:
            item["cost"] = round(total_cost * tokens[name] / everything, 6)
        out[name] = item
    return out


def accrue(inputs: AccrualInputs, pricing: Pricing) -> dict[str, Any]:
    """The next `status.cost`: the previous account plus what the pods held and the usage added since."""
    previous, pods, usage, now = inputs.previous or {}, inputs.pods, inputs.usage, inputs.now
    since = parse_time(previous.get("accruedUntil"))
    held_now = sum(p.gpus if pricing.on_gpu else p.cpus for p in pods if p.node_type != "head" and p.ended is None)
    hours = {parse_time(h.get("hour")): dict(h) for h in previous.get("hours") or [] if parse_time(h.get("hour"))}
    fresh = pod_seconds(pods, since, now)
    for hour, (gpu, cpu) in fresh.items():
        bucket = hours.setdefault(hour, {"hour": rfc3339(hour)})
        bucket["gpuSeconds"] = float(bucket.get("gpuSeconds") or 0) + gpu
        bucket["cpuSeconds"] = float(bucket.get("cpuSeconds") or 0) + cpu
    delta = usage_delta(previous.get("usageSeen"), usage)
    if delta:
        hour = _hour(parse_time((usage or {}).get("reportedAt")) or now)
        bucket = hours.setdefault(hour, {"hour": rfc3339(hour)})
        busy_field = "busyGpuSeconds" if pricing.on_gpu else "busyCpuSeconds"
        bucket[busy_field] = float(bucket.get(busy_field) or 0) + delta["busySeconds"] * held_now
        for key in TOKEN_FIELDS:
            bucket[key] = _count(bucket.get(key)) + delta[key]
    window_start = _hour(now) - timedelta(hours=pricing.window_hours - 1)
    kept = sorted((h, b) for h, b in hours.items() if h is not None and h >= window_start)
    total = dict(previous.get("total") or {})
    total.setdefault("since", rfc3339(since or _first_start(pods) or now))
    total["gpuSeconds"] = float(total.get("gpuSeconds") or 0) + sum(g for g, _ in fresh.values())
    total["cpuSeconds"] = float(total.get("cpuSeconds") or 0) + sum(c for _, c in fresh.values())
    if delta:
        busy_field = "busyGpuSeconds" if pricing.on_gpu else "busyCpuSeconds"
        total[busy_field] = float(total.get(busy_field) or 0) + delta["busySeconds"] * held_now
        for key in TOKEN_FIELDS:
            total[key] = _count(total.get(key)) + delta[key]
    total = _with_cost(total, pricing)
    window: dict[str, Any] = {"since": rfc3339(window_start)}
    for key in (*SECONDS_FIELDS, *TOKEN_FIELDS):
        values = [float(b.get(key) or 0) for _, b in kept]
        window[key] = int(sum(values)) if key in TOKEN_FIELDS else sum(values)
    window = _with_cost(window, pricing)
    by_key = _add_counts(_strip_cost(previous.get("byKey")), delta.get("byKey") or {})
    by_model = _add_counts(_strip_cost(previous.get("byModel")), delta.get("byModel") or {})
    out: dict[str, Any] = {
        "currency": pricing.currency,
        "pricedResource": pricing.resource,
        "total": total,
        "window": window,
        "windowHours": pricing.window_hours,
        "byKey": _shares(by_key, total.get("cost")),
        "byModel": _shares(by_model, total.get("cost")),
        "hours": [_rounded(b) for _, b in kept],
        "accruedUntil": rfc3339(now),
    }
    if pricing.price_per_hour is not None:
        out["pricePerHour"] = pricing.price_per_hour
    if usage:
        out["usageSeen"] = usage
    elif previous.get("usageSeen"):
        out["usageSeen"] = previous["usageSeen"]
    return {k: v for k, v in out.items() if v not in ({}, [])}


def _strip_cost(counts: dict[str, Any] | None) -> dict[str, dict[str, int]]:
    return {
        name: {k: _count(v) for k, v in (entry or {}).items() if k != "cost"} for name, entry in (counts or {}).items()
    }


def _rounded(bucket: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 1) if isinstance(v, float) else v for k, v in bucket.items()}


def _first_start(pods: list[PodRecord]) -> datetime | None:
    starts = [p.scheduled or p.started for p in pods if p.node_type != "head" and (p.scheduled or p.started)]
    return min((s for s in starts if s is not None), default=None)


def pricing_for(on_gpu: bool, product: str | None, prices: Any) -> Pricing:
    """Pricing from the operator config's `prices` (bigmodel_operator.config.Prices)."""
    if on_gpu:
        resource = f"GPU-hour of {product or 'any GPU'}"
        return Pricing(True, prices.gpu_price(product), prices.currency, resource, prices.window_hours)
    return Pricing(False, prices.cpu_core_hour, prices.currency, "CPU-core-hour", prices.window_hours)
