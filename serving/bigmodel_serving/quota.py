"""Per-key quotas (requests/min, tokens/min) and usage, shared by every ingress replica.

`QuotaBook` is the pure part: one token bucket per key and limit, refilled continuously at
limit/60 per second up to `limit` (so a key can burst a full minute's worth, then gets its
steady rate). A request needs one request-token and a non-negative token balance; the tokens a
request actually used (prompt + completion, known when it ends) are charged afterwards, so a long
answer can drive the balance below zero and the key waits until it refills. `Retry-After` is the
time until the request would be admitted.

`QuotaActor` wraps one `QuotaBook` in a named Ray actor per application: the single source of truth,
so the limits hold across all ingress replicas. Ingress replicas do not call it per request: they
lease slices of the buckets (quota_leases.py).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from bigmodel_serving.args import Quota
from bigmodel_serving.head_placement import head_pinning

ACTOR_NAMESPACE = "bigmodel"


def actor_name(app_name: str) -> str:
    return f"bigmodel-quota:{app_name}"


def limited(quota: Quota) -> bool:
    return bool(quota.requests_per_minute or quota.tokens_per_minute)


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

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)


@dataclass(frozen=True)
class Grant:
    """The actor's answer to a lease request."""

    wait: float  # 0: admitted (when a request asked); else seconds until it would be
    requests: int = 0  # request tokens leased
    tokens: float = 0.0  # token allowance leased


@dataclass
class KeyUsage:
    responses: dict[int, int] = field(default_factory=dict)  # by HTTP status
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, responses: dict[int, int], prompt_tokens: int, completion_tokens: int) -> None:
        for status, count in responses.items():
            self.responses[status] = self.responses.get(status, 0) + count
        self.prompt_tokens += max(0, prompt_tokens)
        self.completion_tokens += max(0, completion_tokens)

    def as_dict(self) -> dict[str, Any]:
        return {
            "responses": dict(self.responses),
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
        }


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
        return self.lease(key, quota).wait

    def lease(self, key: str, quota: Quota, requests: int = 0, tokens: float = 0.0, *, admit: bool = True) -> Grant:
        """Admit one request (unless `admit` is false), then lease up to `requests` and `tokens` on top.

        Nothing is leased while the key would have to wait; what is leased leaves the buckets.
        """
        now = self.clock()
        request_bucket = token_bucket = None
        waits = []
        if quota.requests_per_minute:
            request_bucket = self._bucket(self._requests, key, quota.requests_per_minute, now)
            waits.append(request_bucket.seconds_until(1.0))
        if quota.tokens_per_minute:
            token_bucket = self._bucket(self._tokens, key, quota.tokens_per_minute, now)
            waits.append(token_bucket.seconds_until(0.0))
        wait = max(waits, default=0.0)
        if wait > 0:
            return Grant(wait)
        leased_requests, leased_tokens = 0, 0.0
        if request_bucket is not None:
            if admit:
                request_bucket.level -= 1.0
            leased_requests = max(0, min(requests, math.floor(request_bucket.level)))
            request_bucket.level -= leased_requests
        if token_bucket is not None:
            leased_tokens = max(0.0, min(tokens, token_bucket.level))
            token_bucket.level -= leased_tokens
        return Grant(0.0, leased_requests, leased_tokens)

    def give_back(self, key: str, quota: Quota, requests: float, tokens: float) -> None:
        """Return an unused lease; negative `tokens` is a debt (tokens used beyond the lease)."""
        now = self.clock()
        if quota.requests_per_minute and requests:
            self._bucket(self._requests, key, quota.requests_per_minute, now).give_back(requests)
        if quota.tokens_per_minute and tokens:
            self._bucket(self._tokens, key, quota.tokens_per_minute, now).give_back(tokens)

    def count(self, key: str, responses: dict[int, int], prompt_tokens: int, completion_tokens: int) -> None:
        """Add to the usage counters only."""
        self.usage.setdefault(key, KeyUsage()).add(responses, prompt_tokens, completion_tokens)

    def record(self, key: str, quota: Quota, status: int, prompt_tokens: int, completion_tokens: int) -> None:
        """Count a finished request and take the tokens it used from the key's token bucket."""
        self.count(key, {status: 1}, prompt_tokens, completion_tokens)
        used = max(0, prompt_tokens) + max(0, completion_tokens)
        if used:
            self.give_back(key, quota, 0.0, -float(used))

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {key: usage.as_dict() for key, usage in self.usage.items()}


def retry_after_header(wait_s: float) -> str:
    """Whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(wait_s)))


# What a replica sends back: (key, quota as a dict, request tokens, token allowance or debt).
Return = tuple[str, dict[str, Any], float, float]


class QuotaActor:
    """The Ray actor holding one application's `QuotaBook` (created with ray.remote in `quota_actor`),
    and its `UsageLedger` (usage_report.py), reported into the BigModel's status once told where."""

    def __init__(self) -> None:
        from bigmodel_serving.usage_report import UsageLedger

        self.book = QuotaBook()
        self.ledger = UsageLedger()
        self.reporter: Any = None
        self._usage_lock = threading.Lock()  # the reporter thread reads what settle() writes

    def admit(self, key: str, quota: dict[str, Any]) -> float:
        return self.book.admit(key, Quota.model_validate(quota))

    def lease(
        self,
        key: str,
        quota: dict[str, Any],
        returned: tuple[float, float],
        wanted: tuple[int, float],
        admit: bool,
    ) -> tuple[float, int, float]:
        """Take back what the replica `returned` (requests, tokens), then `QuotaBook.lease`."""
        typed = Quota.model_validate(quota)
        self.book.give_back(key, typed, *returned)
        grant = self.book.lease(key, typed, *wanted, admit=admit)
        return grant.wait, grant.requests, grant.tokens

    def settle(
        self,
        returns: list[Return],
        usage: dict[str, dict[str, Any]],
        models: dict[str, dict[str, Any]] | None = None,
        busy: list[tuple[float, float]] | None = None,
    ) -> None:
        """Expired leases and token debts from a replica, its usage counters by key and by model since the
        last call, and the intervals it had requests in flight."""
        for key, quota, requests, tokens in returns:
            self.book.give_back(key, Quota.model_validate(quota), requests, tokens)
        with self._usage_lock:
            for key, counts in usage.items():
                self.book.count(key, counts["responses"], counts["prompt_tokens"], counts["completion_tokens"])
            self.ledger.add_models(models or {})
            self.ledger.busy.add(list(busy or []))

    def record(self, key: str, quota: dict[str, Any], status: int, prompt_tokens: int, completion_tokens: int) -> None:
        with self._usage_lock:
            self.book.record(key, Quota.model_validate(quota), status, prompt_tokens, completion_tokens)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        with self._usage_lock:
            return self.book.snapshot()

    def usage_report(self) -> dict[str, Any]:
        """The `status.usage` block (also what the reporter sends)."""
        with self._usage_lock:
            return self.ledger.report(self.book.snapshot())

    def report_usage_to(self, namespace: str, bigmodel: str) -> None:
        """Start reporting into this BigModel's status (the first ingress replica tells; later calls no-op)."""
        from bigmodel_serving.usage_report import UsageReporter

        if self.reporter is None:
            self.reporter = UsageReporter(namespace, bigmodel, self.usage_report)


def quota_actor(app_name: str) -> Any:
    """The application's quota actor, created on first use (detached: it outlives any one ingress replica)."""
    import ray

    remote_cls = cast(Any, ray.remote)(num_cpus=0, max_restarts=-1, max_concurrency=1)(QuotaActor)
    return remote_cls.options(
        name=actor_name(app_name),
        namespace=ACTOR_NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        **head_pinning(),  # outlives worker pods that scale to zero
    ).remote()
