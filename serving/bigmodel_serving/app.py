"""`build_app`: the Ray Serve application builder named in the operator's serveConfigV2.

    applications:
      - name: <bigmodel name>
        route_prefix: /
        import_path: bigmodel_serving.app:build_app
        args: <ServeArgs as JSON>

This module imports ray only inside `build_app`, so `deployment_options` can be checked anywhere.
"""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any, cast

from bigmodel_serving.args import ServeArgs, parse_serve_args

if TYPE_CHECKING:
    from ray.serve import Application

    from bigmodel_serving.engines import EngineFactory

logger = logging.getLogger(__name__)

DEPLOYMENT_NAME = "BigModelServer"
# Serve may send a replica this many requests beyond our own limits: /health, /metrics and
# requests the replica itself rejects with a 429 must not queue behind generations.
CONTROL_HEADROOM = 8
RETRY_AFTER_S = 1


def deployment_options(args: ServeArgs) -> dict[str, Any]:
    """The Serve deployment options for these args (pure; see docs/serving.md, "Limits").

    The replica admits `max_ongoing_requests` generations and queues `max_queued_requests` more
    itself, answering 429 with an OpenAI-style body beyond that. Serve is told to send a replica at
    most that many (+ a little headroom), and to keep at most `max_queued_requests` waiting in each
    proxy before it answers 429 with Retry-After too.
    """
    limits, scaling, resources = args.limits, args.scaling, args.replica_resources
    options: dict[str, Any] = {
        "name": DEPLOYMENT_NAME,
        "max_ongoing_requests": limits.max_ongoing_requests + limits.max_queued_requests + CONTROL_HEADROOM,
        "max_queued_requests": limits.max_queued_requests,
        "backpressure_config": {"status_code": 429, "retry_after_s": RETRY_AFTER_S},
        "autoscaling_config": {
            "min_replicas": scaling.min_replicas,
            "max_replicas": scaling.max_replicas,
            "initial_replicas": max(1, scaling.min_replicas),
            "target_ongoing_requests": scaling.target_ongoing_requests,
        },
        "ray_actor_options": {"num_cpus": resources.num_cpus, "num_gpus": resources.num_gpus},
        "health_check_period_s": 10,
        "health_check_timeout_s": 30,
        "graceful_shutdown_timeout_s": min(limits.request_timeout_s, 60),
    }
    world_size = args.engine_args.tensor_parallel_size * args.engine_args.pipeline_parallel_size
    if args.engine == "vllm" and world_size > 1:
        # vLLM's Ray executor places one worker per GPU bundle; the replica itself needs no GPU.
        options["ray_actor_options"] = {"num_cpus": resources.num_cpus, "num_gpus": 0}
        options["placement_group_bundles"] = [{"CPU": resources.num_cpus}] + [{"GPU": 1}] * world_size
        options["placement_group_strategy"] = "PACK"
    return options


def build_app(args: dict[str, Any] | ServeArgs, *, engine_factory: EngineFactory | None = None) -> Application:
    """Validate `args` as `ServeArgs` and return the Serve application (one deployment).

    Raises `bigmodel_serving.args.InvalidServeArgsError` listing every wrong field. `engine_factory`
    replaces the engine named in the args (tests and benchmarks pass a stub); the serve config
    path never sets it.
    """
    serve_args = parse_serve_args(args)
    if serve_args.engine == "vllm":
        from bigmodel_serving.engines.vllm_args import vllm_engine_kwargs

        vllm_engine_kwargs(serve_args)  # bad extra_args fail here, not in every replica
    from bigmodel_serving.deployment import BigModelServer

    server = cast(Any, BigModelServer)
    options = _supported_options(server.options, deployment_options(serve_args))
    return server.options(**options).bind(serve_args.model_dump(mode="json"), engine_factory)


def _supported_options(options_method: Any, options: dict[str, Any]) -> dict[str, Any]:
    """Drop options this Ray release does not know (e.g. `backpressure_config` before Ray 2.60)."""
    accepted = inspect.signature(options_method).parameters
    dropped = sorted(set(options) - set(accepted))
    if dropped:
        logger.warning("this Ray version ignores deployment options %s", ", ".join(dropped))
    return {key: value for key, value in options.items() if key in accepted}
