"""Each ingress replica's side of the quota actor, which keeps the actor off the request path.

A replica leases a slice of a key's buckets (`LEASE_SHARE` of the per-minute limits: request tokens
and a token allowance, debited from the actor's buckets) and admits from it locally; it tops the
lease up in the background when it runs low, and an unused lease goes back to the actor after
`LEASE_TTL_S`. Tokens a request used are charged to the local lease; debts, expired leases and usage
counters reach the actor every `FLUSH_INTERVAL_S`. Only when a key's lease is empty does a request wait
for the actor, which then admits or refuses it exactly as `QuotaBook.admit` would (429 + Retry-After)
and hands out a new lease.

Bounds, with R ingress replicas and at most one lease per key and replica: requests are never
admitted beyond the buckets (a lease is taken out of them), but up to R - 1 slices can sit in other
replicas' leases, so a replica may refuse a key early, by at most that much, for at most the TTL.
Token charges reach the actor up to `FLUSH_INTERVAL_S` late, so across replicas a key can overrun its
tokens/min by what the other replicas admit in that interval (within one replica the check is as
exact as `QuotaBook`'s). Keys with limits under 1/`LEASE_SHARE` requests per minute get no extra
slice: each of their requests asks the actor.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, cast

from bigmodel_serving.actor_calls import BACKGROUND_TIMEOUT_S, DependencyUnavailableError, call_actor
from bigmodel_serving.args import Quota
from bigmodel_serving.quota import KeyUsage, Return, limited

LEASE_SHARE = 0.05  # a lease: 5 % of a key's per-minute limits (3 s of its steady rate)
LEASE_TTL_S = 5.0  # an unused lease goes back to the actor after this long
FLUSH_INTERVAL_S = 1.0  # usage, token debts and expired leases reach the actor this often

logger = logging.getLogger("ray.serve")


@dataclass
class _Lease:
    """One key's lease in one replica. `tokens` goes negative when answers used more than was leased."""

    quota: Quota
    requests: float = 0.0
    tokens: float = 0.0
    expires: float = 0.0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)  # one actor call per key at a time
    refilling: bool = False

    def covers(self, now: float) -> bool:
        """True when the lease admits one more request."""
        if now >= self.expires:
            return False
        if self.quota.requests_per_minute and self.requests < 1:
            return False
        return not (self.quota.tokens_per_minute and self.tokens <= 0)

    def take(self) -> None:
        if self.quota.requests_per_minute:
            self.requests -= 1

    def returned(self, key: str) -> Return:
        return (key, self.quota.model_dump(), self.requests, self.tokens)


class QuotaLeases:
    """This replica's leases of the quota actor's buckets, and its usage not yet sent (see the module doc).

    `actor_of` gives the actor handle (anything whose methods have an awaitable `.remote()`); it is
    called once, on first need. All methods run on the replica's event loop.
    """

    def __init__(
        self,
        actor_of: Callable[[], Any],
        *,
        clock: Callable[[], float] = time.monotonic,
        share: float = LEASE_SHARE,
        ttl_s: float = LEASE_TTL_S,
        flush_interval_s: float | None = FLUSH_INTERVAL_S,
    ) -> None:
        self._actor_of = actor_of
        self._actor: Any = None
        self.clock = clock
        self.share = share
        self.ttl_s = ttl_s
        self.flush_interval_s = flush_interval_s  # None: no background flushing (tests call flush())
        self._leases: dict[str, _Lease] = {}
        self._returns: list[Return] = []
        self._usage: dict[str, KeyUsage] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self.hits = 0  # admitted from a local lease
        self.misses = 0  # had to ask the actor

    def actor(self) -> Any:
        if self._actor is None:
            self._actor = self._actor_of()
        return self._actor

    async def _call(self, method: str, *args: Any, timeout_s: float | None = None) -> Any:
        """One call to the quota actor; DependencyUnavailableError when it fails or takes too long."""
        try:
            return await call_actor("quota service", getattr(self.actor(), method).remote(*args), timeout_s)
        except DependencyUnavailableError:
            self._actor = None  # look it up again next time: a detached actor killed for good is created anew
            raise
        except Exception as error:  # looking the actor up failed (Ray's control plane): the same to callers
            self._actor = None
            raise DependencyUnavailableError("quota service", error) from error

    def wanted(self, quota: Quota) -> tuple[int, float]:
        """The size of one lease: (request tokens, token allowance)."""
        requests = math.floor(quota.requests_per_minute * self.share) if quota.requests_per_minute else 0
        tokens = quota.tokens_per_minute * self.share if quota.tokens_per_minute else 0.0
        return requests, tokens

    async def admit(self, key: str, quota: Quota) -> float:
        """0 when the request may go on (one request taken), else seconds until it could."""
        if not limited(quota):
            return 0.0
        self._start_flusher()
        lease = self._leases.get(key)
        now = self.clock()
        if lease is not None and (lease.quota is quota or lease.quota == quota) and lease.covers(now):
            lease.take()
            self.hits += 1
            if not lease.refilling and not lease.lock.locked() and self._running_low(lease, now):
                self._spawn(self._top_up(key, lease))
            return 0.0
        return await self._ask_actor(key, quota)

    def _running_low(self, lease: _Lease, now: float) -> bool:
        requests, tokens = self.wanted(lease.quota)
        if lease.quota.requests_per_minute and lease.requests < requests / 2:
            return True
        if lease.quota.tokens_per_minute and lease.tokens < tokens / 2:
            return True
        return now > lease.expires - self.ttl_s / 2  # in use: renew before it expires

    def _lease_for(self, key: str, quota: Quota) -> _Lease:
        lease = self._leases.get(key)
        if lease is None or lease.quota != quota:
            if lease is not None:  # the key's limits changed: the old lease goes back
                self._returns.append(lease.returned(key))
            lease = self._leases[key] = _Lease(quota)
        return lease

    async def _ask_actor(self, key: str, quota: Quota) -> float:
        """The miss path: give the lease's rest (or debt) back, be admitted or refused, get a new lease."""
        lease = self._lease_for(key, quota)
        async with lease.lock:
            if lease.covers(self.clock()):  # a concurrent call for this key brought a new lease
                lease.take()
                self.hits += 1
                return 0.0
            self.misses += 1
            returned = (lease.requests, lease.tokens)
            wait, requests, tokens = await self._call(
                "lease", key, quota.model_dump(), returned, self.wanted(quota), True
            )
            # Hits and charges may have happened meanwhile: apply the exchange as a difference.
            lease.requests += requests - returned[0]
            lease.tokens += tokens - returned[1]
            lease.expires = self.clock() + self.ttl_s
            self._drop_if_replaced(key, lease)
            return float(wait)

    async def _top_up(self, key: str, lease: _Lease) -> None:
        """Refill a lease running low, in the background (requests meanwhile still use what is left)."""
        lease.refilling = True
        try:
            async with lease.lock:
                requests, tokens = self.wanted(lease.quota)
                wanted = (max(0, requests - math.floor(max(lease.requests, 0.0))), max(0.0, tokens - lease.tokens))
                _, got_requests, got_tokens = await self._call(
                    "lease", key, lease.quota.model_dump(), (0.0, 0.0), wanted, False, timeout_s=BACKGROUND_TIMEOUT_S
                )
                lease.requests += got_requests
                lease.tokens += got_tokens
                lease.expires = self.clock() + self.ttl_s
                self._drop_if_replaced(key, lease)
        except Exception as error:  # the next empty lease asks the actor on the request path
            logger.warning("bigmodel: quota lease refill failed: %r", error)
        finally:
            lease.refilling = False

    def _drop_if_replaced(self, key: str, lease: _Lease) -> None:
        if self._leases.get(key) is not lease:
            self._returns.append(lease.returned(key))
            lease.requests = lease.tokens = 0.0

    def record(self, key: str, quota: Quota, status: int, prompt_tokens: int, completion_tokens: int) -> None:
        """Count a finished request; charge the tokens it used to the key's lease (a debt if beyond it)."""
        self._usage.setdefault(key, KeyUsage()).add({status: 1}, prompt_tokens, completion_tokens)
        used = max(0, prompt_tokens) + max(0, completion_tokens)
        if quota.tokens_per_minute and used:
            lease = self._leases.get(key)
            if lease is None:
                lease = self._leases[key] = _Lease(quota)  # expired at once: the debt goes at the next flush
            lease.tokens -= used
        self._start_flusher()

    async def flush(self, *, everything: bool = False) -> None:
        """Send usage, token debts and expired leases (all leases with `everything`) to the actor."""
        now = self.clock()
        returns, self._returns = self._returns, []
        for key, lease in list(self._leases.items()):
            if lease.lock.locked():
                continue  # an actor call for this key is under way; it settles the lease itself
            if everything or now >= lease.expires:
                del self._leases[key]
                if lease.requests or lease.tokens:
                    returns.append(lease.returned(key))
            elif lease.tokens < 0:
                returns.append((key, lease.quota.model_dump(), 0.0, lease.tokens))
                lease.tokens = 0.0
        usage, self._usage = self._usage, {}
        if returns or usage:
            counts = {key: counts.as_dict() for key, counts in usage.items()}
            await self._call("settle", returns, counts, timeout_s=BACKGROUND_TIMEOUT_S)

    async def snapshot(self) -> dict[str, dict[str, Any]]:
        """Usage of every key over all replicas (this replica's is sent first); DependencyUnavailableError."""
        try:
            await self.flush()
        except DependencyUnavailableError as error:
            logger.warning("bigmodel: quota flush failed: %r", error.underlying)
        return cast(dict[str, dict[str, Any]], await self._call("snapshot", timeout_s=BACKGROUND_TIMEOUT_S))

    async def close(self) -> None:
        """Stop flushing and give everything back."""
        for task in [self._flusher, *self._tasks]:
            if task is not None:
                task.cancel()
        await self.flush(everything=True)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_flusher(self) -> None:
        if self.flush_interval_s is None or (self._flusher is not None and not self._flusher.done()):
            return
        try:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_forever(self.flush_interval_s))
        except RuntimeError:  # no running loop (called outside the replica's loop): flush on demand only
            self._flusher = None

    async def _flush_forever(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.flush()
            except Exception as error:  # best effort: usage of this interval is lost, limits still hold
                logger.warning("bigmodel: quota flush failed: %r", error)
