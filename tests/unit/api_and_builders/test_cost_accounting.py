"""The cost arithmetic of status.cost (status/cost_accounting.py): pod seconds, idle, tokens, prices, windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from bigmodel_operator.config import Prices
from bigmodel_operator.status.cost_accounting import (
    AccrualInputs,
    Pricing,
    accrual_due,
    accrue,
    pod_seconds,
    pricing_for,
    split_by_hour,
    usage_delta,
)
from bigmodel_operator.status.startup_phases import PodRecord

T0 = datetime(2026, 12, 6, 10, 0, 0, tzinfo=UTC)
GPU = Pricing(on_gpu=True, price_per_hour=2.0, currency="USD", resource="GPU-hour of H100")


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def worker(name: str, start: float, end: float | None = None, gpus: int = 1, cpus: float = 8.0) -> PodRecord:
    return PodRecord(
        name, "worker", at(start - 1), at(start), at(start + 10), None, at(end) if end is not None else None, "n1",
        gpus, cpus,
    )  # fmt: skip


def usage(since: str, reported: float, prompt: int, completion: int, busy: float, **by_key: int) -> dict[str, Any]:
    return {
        "since": since,
        "reportedAt": (T0 + timedelta(seconds=reported)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "requests": sum(by_key.values()) or 1,
        "promptTokens": prompt,
        "completionTokens": completion,
        "busySeconds": busy,
        "byKey": {k: {"requests": v, "promptTokens": prompt // len(by_key), "completionTokens": 0} for k, v in by_key.items()},
    }  # fmt: skip


def test_split_by_hour() -> None:
    assert split_by_hour(at(3000), at(4200)) == [(T0, 600.0), (T0 + timedelta(hours=1), 600.0)]


def test_pod_seconds_count_each_interval_once_and_skip_the_head() -> None:
    pods = [
        worker("a", 0, end=1800, gpus=2),
        worker("b", 900),
        PodRecord("h", "head", T0, T0, T0, T0, None, None, 0, 2),
    ]
    first = pod_seconds(pods, None, at(3600))
    assert first == {T0: (2 * 1800 + 2700, 8 * 1800 + 8 * 2700)}
    later = pod_seconds(pods, at(3600), at(3700))
    assert later == {T0 + timedelta(hours=1): (100.0, 800.0)}  # only b runs; a ended


def test_gpu_seconds_cost_idle_and_cost_per_million_tokens() -> None:
    pods = [worker("a", 0)]
    cost = accrue(AccrualInputs(None, pods, usage("s1", 3600, 600_000, 400_000, 900.0), at(3600)), GPU)
    total = cost["total"]
    assert total["gpuSeconds"] == 3600.0
    assert total["busyGpuSeconds"] == 900.0 and total["idleGpuSeconds"] == 2700.0
    assert total["cost"] == 2.0  # one GPU-hour at 2.0
    assert total["costPerMillionTokens"] == 2.0  # 2.0 for 1,000,000 tokens
    assert cost["pricePerHour"] == 2.0 and cost["currency"] == "USD"
    assert cost["accruedUntil"] == "2026-12-06T11:00:00Z"


def test_a_report_is_counted_once_and_a_restarted_actor_counts_from_zero() -> None:
    pods = [worker("a", 0)]
    one = accrue(AccrualInputs(None, pods, usage("s1", 60, 100, 50, 10.0, alice=2), at(60)), GPU)
    same = accrue(AccrualInputs(one, pods, usage("s1", 60, 100, 50, 10.0, alice=2), at(120)), GPU)
    assert same["total"]["promptTokens"] == 100 and same["total"]["gpuSeconds"] == 120.0
    more = accrue(AccrualInputs(same, pods, usage("s1", 180, 300, 150, 30.0, alice=5), at(180)), GPU)
    assert (more["total"]["promptTokens"], more["total"]["completionTokens"]) == (300, 150)
    restarted = accrue(AccrualInputs(more, pods, usage("s2", 240, 40, 10, 5.0, alice=1), at(240)), GPU)
    assert (restarted["total"]["promptTokens"], restarted["total"]["completionTokens"]) == (340, 160)
    assert restarted["byKey"]["alice"]["requests"] == 6 and restarted["byKey"]["alice"]["promptTokens"] == 340


def test_by_key_cost_is_shared_by_tokens() -> None:
    report = usage("s1", 3600, 1000, 0, 0.0, alice=1, bob=1)
    cost = accrue(AccrualInputs(None, [worker("a", 0)], report, at(3600)), GPU)
    assert cost["byKey"]["alice"]["cost"] == cost["byKey"]["bob"]["cost"] == 1.0


def test_cpu_models_are_priced_by_core_hours() -> None:
    cpu = Pricing(on_gpu=False, price_per_hour=0.05, currency="EUR", resource="CPU-core-hour")
    cost = accrue(AccrualInputs(None, [worker("a", 0, gpus=0, cpus=2.0)], None, at(3600)), cpu)
    assert cost["total"]["cpuSeconds"] == 7200.0 and cost["total"]["gpuSeconds"] == 0.0
    assert cost["total"]["cost"] == pytest.approx(0.1)
    assert "costPerMillionTokens" not in cost["total"]


def test_no_price_no_cost() -> None:
    unpriced = Pricing(on_gpu=True, price_per_hour=None, currency="USD", resource="GPU-hour of X")
    cost = accrue(AccrualInputs(None, [worker("a", 0)], None, at(60)), unpriced)
    assert "cost" not in cost["total"] and "pricePerHour" not in cost


def test_the_window_keeps_the_last_hours() -> None:
    short = Pricing(on_gpu=True, price_per_hour=1.0, currency="USD", resource="x", window_hours=2)
    cost = accrue(AccrualInputs(None, [worker("a", 0)], None, at(2.5 * 3600)), short)  # 10:00 -> 12:30
    assert cost["total"]["gpuSeconds"] == 9000
    assert cost["window"]["gpuSeconds"] == 5400 and cost["windowHours"] == 2  # 11:00 -> 12:30
    assert [h["hour"] for h in cost["hours"]] == ["2026-12-06T11:00:00Z", "2026-12-06T12:00:00Z"]


def test_accrual_is_due_on_news_or_after_a_period() -> None:
    pods = [worker("a", 0)]
    previous = accrue(AccrualInputs(None, pods, None, at(60)), GPU)
    assert not accrual_due(AccrualInputs(previous, pods, None, at(120)))
    assert accrual_due(AccrualInputs(previous, pods, None, at(400)))
    assert accrual_due(AccrualInputs(previous, [*pods, worker("b", 100)], None, at(120)))
    assert accrual_due(AccrualInputs(previous, pods, usage("s1", 90, 1, 1, 1.0), at(120)))
    assert not accrual_due(AccrualInputs(None, [], None, at(120)))  # nothing ever ran: no cost block


def test_usage_delta_never_goes_negative() -> None:
    seen = usage("s1", 60, 100, 50, 10.0, alice=2)
    assert usage_delta(seen, usage("s1", 120, 90, 50, 10.0, alice=2))["promptTokens"] == 0


def test_pricing_from_the_chart() -> None:
    prices = Prices(gpu_hour={"NVIDIA-H100-80GB-HBM3": 2.49}, default_gpu_hour=1.5, cpu_core_hour=0.04)
    assert pricing_for(True, "NVIDIA-H100-80GB-HBM3", prices).price_per_hour == 2.49
    assert pricing_for(True, "NVIDIA-L4", prices).price_per_hour == 1.5
    assert pricing_for(False, None, prices).price_per_hour == 0.04


def test_operator_metrics_carry_each_bigmodels_cost() -> None:
    from bigmodel_operator.metrics import cost_lines

    written = {
        ("BigModel", "team-a", "llama"): {"cost": {"currency": "USD", "total": {"gpuSeconds": 7200.0, "cost": 5.0}}},
        ("BigModel", "team-a", "other"): {"conditions": []},
        ("FineTuneJob", "team-a", "job"): {"cost": {"total": {"gpuSeconds": 1.0}}},
    }
    text = "\n".join(cost_lines(written))
    assert 'bigmodel_gpu_seconds_total{namespace="team-a",bigmodel="llama"} 7200.0' in text
    assert 'bigmodel_cost_total{namespace="team-a",bigmodel="llama",currency="USD"} 5.0' in text
    assert "other" not in text and "job" not in text
