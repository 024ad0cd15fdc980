"""Adapter (multiplexing) affinity and prefix-cache affinity in the engine's request router, on real Ray.

Two engine replicas: r1 holds the adapter `lora-a`, r2 holds none. The router has seen a long `lora-a`
prompt go to r1 and a short plain prompt go to r2, so r2 is the prefix tree's smallest tenant. Then:

    (1) a `lora-a` request continuing r1's prompt       should go to r1 (adapter and prefix agree)
    (2) a `lora-a` request with a brand-new prompt       should go to r1 (the adapter decides)
    (3) a plain request continuing r2's prompt           should go to r2 (the prefix decides)
    (4) a `lora-b` request (no replica holds it)         goes where Serve's multiplexing sends it: the
                                                         replicas with the fewest adapters, r2

Ray's `PrefixCacheAffinityRouter` (pinned Ray 2.60) sends (1) and (2) to r2, which would load `lora-a` too:
the two affinities fight. `bigmodel_serving.routing.AdapterAffinePrefixRouter` keeps them on r1. The asserts
on Ray's router are there to fail loudly when a Ray upgrade changes it (then the subclass may be unneeded).

A real Ray (local, one CPU), real routers and Ray's real prefix tree actor; the replicas are stand-ins
(`RunningReplica` with a replica id, its adapters and an empty queue), driven through Serve's router hooks
(`update_replicas`, `on_request_routed`, `choose_replicas`) the way a deployment handle drives them. No vLLM,
and none of this directory's session fixtures (no `serving` stack).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

ADAPTER = "lora-a"
OTHER_ADAPTER = "lora-b"  # held by no replica
DEPLOYMENT = "BigModelEngine"
# The operator's router kwargs (builders/serve_args.py request_router_config), less eviction: the
# autoscaling target (16 by default) as the queue imbalance past which the router stops preferring prefixes.
IMBALANCED_THRESHOLD = 16
# The history: r1 served a long adapter conversation, r2 a short plain one, so r2 is the prefix tree's
# smallest tenant (fewest characters); the new prompt shares no first character with either.
ADAPTER_PROMPT = "You are the lora-a assistant of the billing team. Answer in one short sentence. " * 4
PLAIN_PROMPT = "Plain system prompt for the base model. "
NEW_PROMPT = "zz a brand-new conversation nobody has sent before"


@pytest.fixture(scope="module")
def ray_runtime() -> Iterator[None]:
    """A small local Ray; one already started in this process (the `serving` stack) is reused, not stopped."""
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(num_cpus=1, include_dashboard=False, _node_ip_address="127.0.0.1", logging_level=logging.WARNING)
    try:
        yield
    finally:
        ray.shutdown()


class _Prompt:
    """What the router reads from a request's first argument (Ray's completion request has `.prompt`)."""

    def __init__(self, prompt: str) -> None:
        self.prompt = prompt


def _replica_class() -> type:
    from ray.serve._private.common import DeploymentID
    from ray.serve.request_router import ReplicaID, RunningReplica

    class StandInReplica(RunningReplica):
        """A running engine replica as a router sees it: an id, its adapters, an empty queue."""

        def __init__(self, name: str, adapters: set[str]) -> None:  # no actor behind it
            self._id = ReplicaID(unique_id=name, deployment_id=DeploymentID(name=DEPLOYMENT, app_name="affinity"))
            self._adapters = set(adapters)

        @property
        def replica_id(self) -> Any:
            return self._id

        @property
        def node_id(self) -> str:
            return ""

        @property
        def availability_zone(self) -> str | None:
            return None

        @property
        def multiplexed_model_ids(self) -> set[str]:
            return self._adapters

        @property
        def max_ongoing_requests(self) -> int:
            return 8

        def push_proxy_handle(self, handle: Any) -> None:
            pass

        async def get_queue_len(self, *, deadline_s: float) -> int:
            return 0

    return StandInReplica


def _request(prompt: str, adapter: str = "") -> Any:
    """A pending request as a deployment handle queues it (`multiplexed_model_id`: the adapter, "" for none)."""
    from ray.serve._private.common import RequestMetadata
    from ray.serve.request_router import PendingRequest

    metadata = RequestMetadata(
        request_id="r", internal_request_id=str(time.monotonic_ns()), multiplexed_model_id=adapter
    )
    return PendingRequest(args=[_Prompt(prompt)], kwargs={}, metadata=metadata)


def _recording(router_class: type) -> type:
    """`router_class`, keeping what Serve's multiplexing answered in each of its `apply_multiplex_routing` calls."""

    class Recording(router_class):
        def apply_multiplex_routing(self, pending_request: Any = None) -> Any:
            allowed = super().apply_multiplex_routing(pending_request=pending_request)
            answers = self.__dict__.setdefault("multiplex_answers", [])
            answers.append(sorted(replica_id.unique_id for replica_id in allowed))
            return allowed

    return Recording


def _one_multiplex_answer_per_request(router_class: type) -> type:
    """`router_class` with only fault 1 removed: Serve's multiplexing asked once per request, its answer reused."""

    class OneAnswer(router_class):
        def apply_multiplex_routing(self, pending_request: Any = None) -> Any:
            if pending_request is None:
                return super().apply_multiplex_routing(pending_request=pending_request)
            answers = self.__dict__.setdefault("answers", {})
            if id(pending_request) not in answers:
                answers[id(pending_request)] = super().apply_multiplex_routing(pending_request=pending_request)
            return answers[id(pending_request)]

    return OneAnswer


@asynccontextmanager
async def _router_with_history(router_class: type) -> AsyncIterator[tuple[Any, list[Any]]]:
    """A `router_class` over r1 (holds lora-a) and r2 (none) that has seen the history; and [r1, r2]."""
    import ray
    from ray.serve._private.common import DeploymentHandleSource, DeploymentID

    from bigmodel_serving.ray_internals import PrefixTreeActor

    tree_class: Any = PrefixTreeActor  # a Ray actor class
    tree = tree_class.options(num_cpus=0).remote()
    try:
        router = router_class(
            deployment_id=DeploymentID(name=DEPLOYMENT, app_name="affinity"),
            handle_source=DeploymentHandleSource.REPLICA,
        )
        router.initialize_state(imbalanced_threshold=IMBALANCED_THRESHOLD, tree_actor=tree)
        replica = _replica_class()
        replicas = [replica("r1", {ADAPTER}), replica("r2", set())]
        router.update_replicas(replicas)
        # What Serve calls after sending a request: the router remembers the prompt under that replica.
        router.on_request_routed(_request(ADAPTER_PROMPT, ADAPTER), replicas[0].replica_id, None)
        router.on_request_routed(_request(PLAIN_PROMPT), replicas[1].replica_id, None)
        yield router, replicas
    finally:
        ray.kill(tree)


async def _choose(router: Any, replicas: list[Any], request: Any) -> list[str]:
    """The router's first rank for `request`, by replica name: Serve sends to the less loaded of it."""
    ranks = await router.choose_replicas(candidate_replicas=replicas, pending_request=request)  # all running ones
    return sorted(r.replica_id.unique_id for r in ranks[0])


async def _route(router_class: type) -> tuple[dict[str, list[str]], Any]:
    """Where each case goes (replica names of the router's choice), and the router."""
    async with _router_with_history(router_class) as (router, replicas):
        chosen = {
            "1": await _choose(router, replicas, _request(ADAPTER_PROMPT + "How much do I owe?", ADAPTER)),
            "2": await _choose(router, replicas, _request(NEW_PROMPT, ADAPTER)),
            "3": await _choose(router, replicas, _request(PLAIN_PROMPT + "What is two plus two?")),
            "4": await _choose(router, replicas, _request(NEW_PROMPT, OTHER_ADAPTER)),
        }
    return chosen, router


def test_rays_prefix_router_sends_adapter_requests_to_the_replica_without_the_adapter(ray_runtime: None) -> None:
    from ray.serve.llm.request_router import PrefixCacheAffinityRouter

    chosen, router = asyncio.run(_route(_recording(PrefixCacheAffinityRouter)))

    # The fight: both lora-a requests go to r2, which does not hold lora-a (it would load it as well).
    assert chosen == {"1": ["r2"], "2": ["r2"], "3": ["r2"], "4": ["r2"]}
    # Why (1) goes there: per adapter request Ray's router asks Serve's multiplexing twice, for its
    # power-of-two fallback and then for the prefix match. The first call answers the holder (r1) and marks
    # the request as having tried it, so the second answers the replicas with the fewest adapters (r2), and
    # the prefix is matched there only. Plain requests (3) ask locality instead: no multiplexing answers.
    assert router.multiplex_answers == [["r1"], ["r2"], ["r1"], ["r2"], ["r2"], ["r2"]]


def test_with_one_multiplex_answer_a_new_prompt_still_goes_to_the_smallest_tenant(ray_runtime: None) -> None:
    from ray.serve.llm.request_router import PrefixCacheAffinityRouter

    chosen, _ = asyncio.run(_route(_one_multiplex_answer_per_request(PrefixCacheAffinityRouter)))

    # With the prefix matched among the holders, (1) stays on r1. A new prompt (2) matches nothing, and the
    # router then takes the prefix tree's smallest tenants among all replicas (`get_smallest_tenants`, not
    # restricted to the holders): r2 again.
    assert chosen == {"1": ["r1"], "2": ["r2"], "3": ["r2"], "4": ["r2"]}


def test_adapter_affine_router_keeps_adapter_requests_on_the_adapter(ray_runtime: None) -> None:
    from bigmodel_serving.routing import AdapterAffinePrefixRouter

    chosen, router = asyncio.run(_route(_recording(AdapterAffinePrefixRouter)))

    assert chosen == {"1": ["r1"], "2": ["r1"], "3": ["r2"], "4": ["r2"]}
    # Both calls of a round now see Serve's first answer: the holder for lora-a, the fewest-adapter replica
    # for lora-b (which the subclass leaves as it is).
    assert router.multiplex_answers == [["r1"], ["r1"], ["r1"], ["r1"], ["r2"], ["r2"]]
