"""The engine's prefix-cache router, made to keep adapter requests on the replicas that hold the adapter.

Ray Serve LLM's `PrefixCacheAffinityRouter` (Ray 2.60) is meant to narrow an adapter request (a multiplexed
model id) to the replicas that already hold the adapter, and to compare prompt prefixes among those only.
Two things in its `choose_replicas` undo that, so an adapter request lands on a replica without the adapter,
which then loads it too (an adapter slot and a load spent, and the holder's prefix cache missed):

1. it asks Serve's multiplexing for the candidates twice in one round: once inside the power-of-two step it
   keeps as a fallback, then again for the prefix step. The first call marks the request as having tried the
   holders (`tried_first_multiplexed_models`), so the second answers the next tier of Serve's progression,
   the replicas with the fewest adapters loaded, i.e. the replicas *without* it. Even a prompt whose prefix
   the holder served before goes elsewhere.
2. when no candidate matches enough of the prompt (a new conversation), it takes the prefix tree's
   smallest tenants among *all* replicas, not among the candidates.

`AdapterAffinePrefixRouter` fixes both through Serve's public router hooks only (`choose_replicas`,
`MultiplexMixin.apply_multiplex_routing`): the multiplexing answer is taken once per round and reused, and a
choice outside it is narrowed to it, or, when none of it is left, replaced by the less loaded of two
replicas of it (Serve's power of two). Requests without an adapter are routed exactly as Ray's router does.
tests/integration/serving/test_serving_routing_affinity.py shows both faults on the pinned Ray, and this fix.
"""

from __future__ import annotations

import random
from contextvars import ContextVar
from dataclasses import dataclass
from typing import cast

from ray.serve.llm.request_router import PrefixCacheAffinityRouter
from ray.serve.request_router import PendingRequest, ReplicaID, RunningReplica


@dataclass
class _Round:
    """One `choose_replicas` call: its request, and the replicas Serve's multiplexing allowed it."""

    request: PendingRequest | None = None
    allowed: set[ReplicaID] | None = None


# Per routing task (a contextvar follows the task), so concurrent rounds do not see each other's answer.
_round: ContextVar[_Round | None] = ContextVar("bigmodel_routing_round", default=None)


class AdapterAffinePrefixRouter(PrefixCacheAffinityRouter):
    """`PrefixCacheAffinityRouter` whose adapter requests stay among the replicas that hold the adapter."""

    def apply_multiplex_routing(self, pending_request: PendingRequest | None = None) -> set[ReplicaID]:
        current = _round.get()
        if current is None or pending_request is None:
            return super().apply_multiplex_routing(pending_request=pending_request)
        if current.request is pending_request and current.allowed is not None:
            return current.allowed  # the same round asking again: the same answer
        current.request = pending_request
        current.allowed = super().apply_multiplex_routing(pending_request=pending_request)
        return current.allowed

    async def choose_replicas(  # type: ignore[override]  # Ray 2.60 annotates one list; it returns ranks
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        current = _Round()
        token = _round.set(current)
        try:
            ranks = cast(
                "list[list[RunningReplica]]",
                await super().choose_replicas(candidate_replicas=candidate_replicas, pending_request=pending_request),
            )
        finally:
            _round.reset(token)
        adapter = pending_request.metadata.multiplexed_model_id if pending_request is not None else ""
        allowed = current.allowed if current.request is pending_request else None
        if not adapter or not ranks or not allowed:
            return ranks
        first = ranks[0]
        kept = [replica for replica in first if replica.replica_id in allowed]
        if len(kept) == len(first):
            return ranks
        if kept:
            return [kept]
        # The prefix tree's pick (its smallest tenants, over every replica) holds none of them: the less
        # loaded of two of them instead, as Serve's power of two would pick.
        pool = [replica for replica in candidate_replicas if replica.replica_id in allowed]
        return [random.sample(pool, min(2, len(pool)))] if pool else ranks
