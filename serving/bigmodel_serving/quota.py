"""Per-key quotas (requests/min, tokens/min) and usage, shared by every ingress replica.

`QuotaBook` is the pure part: one token bucket per key and limit, refilled continuously at
limit/60 per second up to `limit` (so a key can burst a full minute's worth, then gets its
steady rate). A request needs one request-token and a non-negative token balance; the tokens a
request actually used (prompt + completion, known when it ends) are charged afterwards, so a long
answer can drive the balance below zero and the key waits until it refills. `Retry-After` is the
time until the request would be admitted.

`QuotaActor` wraps one `QuotaBook` in a named Ray actor per application, so the limits hold across
all ingress replicas; the ingress calls `admit` only for keys that have a limit and sends usage
without waiting for an answer.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from bigmodel_serving.args import Quota

ACTOR_NAMESPACE = "bigmodel"


def actor_name(app_name: str) -> str:
    return f"bigmodel-quota:{app_name}"


@dataclass
class _Bucket:
    capacity: float
    level: float
    updated: float

    def refill(self, now: float) -> None:
        rate = self.capacity / 60.0
        self.level = min(self.capacity, self.level + (now - self.updated) * rate)
        self.updated = now

    def seconds_until(self, amount: float) -> float:
        """Seconds until the level reaches `amount` (0 when it is there)."""
        missing = amount - self.level
        return 0.0 if missing <= 0 else missing / (self.capacity / 60.0)


@dataclass
class KeyUsage:
    responses: dict[int, int] = field(default_factory=dict)  # by HTTP status
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class QuotaBook:
    """Token buckets and usage counters by key name (single-threaded; the actor serializes calls)."""

    clock: Callable[[], float] = time.monotonic
    _requests: dict[str, _Bucket] = field(default_factory=dict)
    _tokens: dict[str, _Bucket] = field(default_factory=dict)
    usage: dict[str, KeyUsage] = field(default_factory=dict)

    def _bucket(self, table: dict[str, _Bucket], key: str, limit: int, now: float) -> _Bucket:
        bucket = table.get(key)
        if bucket is None or bucket.capacity != limit:
            # A new or changed limit starts full (a raised quota applies at once).
            bucket = _Bucket(capacity=float(limit), level=float(limit), updated=now)
            table[key] = bucket
        else:
            bucket.refill(now)
        return bucket

    def admit(self, key: str, quota: Quota) -> float:
        """0 when `key` may send a request now (one request is taken), else seconds to wait."""
        now = self.clock()
        waits = []
        requests = None
        if quota.requests_per_minute:
            requests = self._bucket(self._requests, key, quota.requests_per_minute, now)
            waits.append(requests.seconds_until(1.0))
        if quota.tokens_per_minute:
            tokens = self._bucket(self._tokens, key, quota.tokens_per_minute, now)
            waits.append(tokens.seconds_until(0.0))
        wait = max(waits, default=0.0)
        if wait <= 0 and requests is not None:
            requests.level -= 1.0
        return wait

    def record(self, key: str, quota: Quota, status: int, prompt_tokens: int, completion_tokens: int) -> None:
        """Count a finished request and take the tokens it used from the key's token bucket."""
        usage = self.usage.setdefault(key, KeyUsage())
        usage.responses[status] = usage.responses.get(status, 0) + 1
        used = max(0, prompt_tokens) + max(0, completion_tokens)
        usage.prompt_tokens += max(0, prompt_tokens)
        usage.completion_tokens += max(0, completion_tokens)
        if quota.tokens_per_minute and used:
            bucket = self._bucket(self._tokens, key, quota.tokens_per_minute, self.clock())
            bucket.level -= used

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {
            key: {
                "responses": dict(usage.responses),
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
            }
            for key, usage in self.usage.items()
        }


def retry_after_header(wait_s: float) -> str:
    """Whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait_s)))


class QuotaActor:
    """The Ray actor holding one application's `QuotaBook` (created with ray.remote in `quota_actor`)."""

    def __init__(self) -> None:
        self.book = QuotaBook()

    def admit(self, key: str, quota: dict[str, Any]) -> float:
        return self.book.admit(key, Quota.model_validate(quota))

    def record(self, key: str, quota: dict[str, Any], status: int, prompt_tokens: int, completion_tokens: int) -> None:
        self.book.record(key, Quota.model_validate(quota), status, prompt_tokens, completion_tokens)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return self.book.snapshot()


def quota_actor(app_name: str) -> Any:
    """The application's quota actor, created on first use (detached: it outlives any one ingress replica)."""
    import ray

    remote_cls = cast(Any, ray.remote)(num_cpus=0, max_restarts=-1, max_concurrency=1)(QuotaActor)
    return remote_cls.options(
        name=actor_name(app_name), namespace=ACTOR_NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote()
