"""Render a BigModel into the serving application's serveConfigV2 entry (contract v2).

The shape is `bigmodel_serving.args.ServeApplication`; a contract test proves every rendering parses.
`args` holds only what needs a new engine (Ray Serve hashes it into the code version: a change
restarts every replica); replica bounds, API keys, quotas and adapters go into the per-deployment
options, which Serve applies to running replicas. This module does not import the serving package:
the operator and the workload share only the data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.engine_check import parse_extra_args
from bigmodel_operator.builders.feedback_sink import ingress_feedback
from bigmodel_operator.builders.placement import Placement
from bigmodel_operator.builders.tool_calling import tool_engine_args
from bigmodel_operator.builders.vllm_engine_args import ENGINE_ARGS
from bigmodel_operator.builders.volumes import Mounts
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.planning.serving_plan import DEFAULT_MAX_NUM_SEQS

API_KEYS_DIR = "/etc/bigmodel/api-keys"
HF_TOKEN_ENV = "HF_TOKEN"
APP_IMPORT_PATH = "bigmodel_serving.app:build_app"
INGRESS_DEPLOYMENT = "BigModelIngress"
ENGINE_DEPLOYMENT = "BigModelEngine"
REQUEST_TIMEOUT_S = 600
METRICS_PORT = 8079
"""GET /metrics of the serving app (its metrics deployment, on the Ray head): the head container's
`bm-metrics` port, scraped by the chart's PodMonitor; neither the Ingress nor the serve Service exposes it."""
METRICS_PORT_NAME = "bm-metrics"
CPU_MEMORY_UTILIZATION = 0.05
"""vLLM's CPU build reads gpu_memory_utilization as the share of host RAM for the KV cache: 0.9
would take most of a shared node, so CPU replicas default to 5% unless the spec says otherwise."""
DEFAULT_LORA_RANK = 16  # the trainer's (and PEFT's usual) default rank
MAX_LORAS_DEFAULT = 4  # adapters one batch mixes; the rest wait in the replica's CPU cache
INGRESS_TARGET_ONGOING = 500  # requests in flight per ingress replica (it holds streams, computes little)
ENGINE_REPLICA_CPUS = 1
"""Ray logical CPUs of one engine replica. A slot, not a core count: a CPU worker pod advertises exactly
this many (rayStartParams num-cpus), so it hosts one replica, whose vLLM uses every core of the container
and sizes its KV cache from the container's memory limit."""


MAX_ENGINE_ADAPTER_NAME = 100  # bigmodel_serving.args.AdapterSource.name
PREFIX_CACHE_ROUTER = "bigmodel_serving.routing:AdapterAffinePrefixRouter"
"""Ray Serve LLM's PrefixCacheAffinityRouter, with adapter requests kept on the replicas that hold the adapter
(Ray 2.60's own class sends them elsewhere: serving/bigmodel_serving/routing.py says why)."""
PREFIX_TREE_EVICTION = {"eviction_threshold_chars": 400_000, "eviction_target_chars": 360_000}
"""The prefix router remembers each replica's prompts in a tree; past this many characters per replica it
forgets the least recently used (Ray's defaults, which its tree never applies unless eviction is on)."""


@dataclass(frozen=True)
class AdapterVersion:
    """One FineTuneJob's adapter served from a BigModel: `<name>.<version>` on the engine."""

    name: str  # what clients call: <servedName>:<name>
    version: str  # the FineTuneJob's name
    uri: str

    @property
    def engine_name(self) -> str:
        return f"{self.name}.{self.version}"


@dataclass(frozen=True)
class Route:
    """An adapter name clients call, split between a stable and a candidate version."""

    name: str
    stable: AdapterVersion | None
    candidate: AdapterVersion | None
    weight: float  # the candidate's share, 0..1
    mode: str  # auto | promote | rollback | pin
    canary: tuple[tuple[str, Any], ...] = ()  # snake_case AdapterRoute settings the FineTuneJob set

    def versions(self) -> list[AdapterVersion]:
        return [v for v in (self.stable, self.candidate) if v is not None]

    def render(self) -> dict[str, Any]:
        """bigmodel_serving.args.AdapterRoute."""
        out: dict[str, Any] = {
            "name": self.name,
            "stable": self.stable.engine_name if self.stable else None,
            "candidate": self.candidate.engine_name if self.candidate else None,
            "weight": self.weight,
            "mode": self.mode,
        }
        out.update(dict(self.canary))
        return out


@dataclass(frozen=True)
class Promotions:
    """What FineTuneJobs with deployTo add to a BigModel's rendering.

    `routes` change only user_config (applied in place). `mount_uris` and `lora_rank`/`adapter_names`
    come from every FineTuneJob that targets the BigModel, whatever its phase, so the pod template
    and the LoRA slots are settled when the job is created, not when its adapter is promoted.
    """

    routes: tuple[Route, ...] = ()
    mount_uris: tuple[str, ...] = ()
    lora_rank: int | None = None
    adapter_names: int = 0
    report_to: tuple[str, str] | None = None  # (namespace, BigModel): where the ingress reports canary decisions


def served_name(name: str, spec: BigModelSpec) -> str:
    """The model name clients send: spec.model.servedName, or the BigModel's name."""
    return spec.model.served_name or name


def api_keys_secret_name(name: str, spec: BigModelSpec) -> str | None:
    """The Secret whose data keys are the API keys: the user's, else `<name>-api-keys` (generated).

    None when the spec says `auth.mode: none`.
    """
    auth = spec.auth
    if auth and auth.mode == "none":
        return None
    return (auth.secret_name if auth else None) or f"{name}-api-keys"


DEFAULT_IDLE_SECONDS = 900
"""Scale to zero: a GPU replica's cold start costs minutes (pod, image, weights, compile), so the last one
stops only after 15 idle minutes; short lulls in traffic keep it."""
DEFAULT_WAKE_TIMEOUT_SECONDS = 300
"""Scale to zero: how long a request is held while a replica starts. A GPU replica of an 8B model with its
weights in the cache starts in 1-2 minutes on a node that has the image; 300 s leaves room for a slower
node and, within OpenAI clients' default 600 s timeout, for the answer."""


def scales_to_zero(spec: BigModelSpec) -> bool:
    """Whether the engine may have no replica: minReplicas 0 or replicas 0."""
    scaling = spec.scaling
    if scaling is None:
        return False
    if scaling.replicas is not None:
        return scaling.replicas == 0
    return scaling.min_replicas == 0


def scaling_args(spec: BigModelSpec, config: OperatorConfig) -> dict[str, Any]:
    """Serve replica bounds from the one `spec.scaling` block (fixed replicas => min == max).

    With scale to zero, the last replica stops after `idleSeconds` without requests (Serve's
    downscale_to_zero_delay_s); a request that arrives then is queued by Serve and wakes one."""
    scaling = spec.scaling
    target = (scaling.target_ongoing_requests if scaling else None) or config.default_target_ongoing_requests
    if scaling and scaling.replicas is not None:
        # replicas: 0 keeps the application deployable but holds no GPU until traffic arrives.
        low, high = scaling.replicas, max(1, scaling.replicas)
    else:
        low = scaling.min_replicas if scaling and scaling.min_replicas is not None else 1
        high = scaling.max_replicas if scaling and scaling.max_replicas is not None else max(1, low)
    out: dict[str, Any] = {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": target}
    if low == 0:
        out["downscale_to_zero_delay_s"] = (scaling.idle_seconds if scaling else None) or DEFAULT_IDLE_SECONDS
    if scaling and scaling.upscale_delay_seconds is not None:
        out["upscale_delay_s"] = scaling.upscale_delay_seconds
    if scaling and scaling.downscale_delay_seconds is not None:
        out["downscale_delay_s"] = scaling.downscale_delay_seconds
    return out


def wake_timeout_seconds(spec: BigModelSpec) -> int:
    """How long the ingress holds a request while an engine replica starts (scale to zero)."""
    scaling = spec.scaling
    return (scaling.wake_timeout_seconds if scaling else None) or DEFAULT_WAKE_TIMEOUT_SECONDS


def routing_policy(spec: BigModelSpec, config: OperatorConfig) -> str | None:
    """`spec.routing.policy` when it asks for prefixCache (and there can be more than one replica), else None:
    Serve's default power-of-two router. Not a default tied to the replica bounds: with Ray 2.60 a router
    change rolls the replicas, so a bounds edit that crossed one replica would restart the engines (seen on
    the e2e node)."""
    chosen = spec.routing.policy if spec.routing else None
    if chosen != "prefixCache" or scaling_args(spec, config)["max_replicas"] < 1:
        return None
    return chosen


def request_router_config(spec: BigModelSpec, config: OperatorConfig) -> dict[str, Any] | None:
    """The engine deployment's `request_router_config` (Ray Serve applies it in place), or None for Serve's
    default power-of-two router.

    PrefixCacheAffinityRouter picks the replica with the longest prompt-prefix match while the replicas' queues
    differ by at most `imbalanced_threshold`; past that it takes the less loaded of two. The threshold is the
    autoscaling target: a replica a whole target ahead of another is where cache affinity would start to queue
    requests that another replica could start now. Adapter requests are matched among the replicas holding the
    adapter (Serve's multiplexing) before prefixes are compared, so the two preferences do not compete: our
    subclass of the router (PREFIX_CACHE_ROUTER) makes that so, Ray 2.60's class does not.
    """
    if routing_policy(spec, config) != "prefixCache":
        return None
    target = scaling_args(spec, config)["target_ongoing_requests"]
    return {
        "request_router_class": PREFIX_CACHE_ROUTER,
        "request_router_kwargs": {"imbalanced_threshold": target, "do_eviction": True, **PREFIX_TREE_EVICTION},
    }


def max_num_seqs(spec: BigModelSpec) -> int:
    """Sequences one replica batches: the engine's real setting, also the replica's admission limit."""
    return (spec.engine.max_num_seqs if spec.engine else None) or DEFAULT_MAX_NUM_SEQS


def engine_args(spec: BigModelSpec, place: Placement) -> dict[str, Any]:
    """Typed engine arguments with the plan's parallelism and context length filled in."""
    eng = spec.engine
    args: dict[str, Any] = {
        "tensor_parallel_size": place.tensor_parallel_size,
        "pipeline_parallel_size": place.pipeline_parallel_size,
        "max_num_seqs": max_num_seqs(spec),
        "gpu_memory_utilization": (eng.gpu_memory_utilization if eng else None)
        or (0.9 if place.on_gpu else CPU_MEMORY_UTILIZATION),
    }
    if place.max_model_len:
        args["max_model_len"] = place.max_model_len
    extra: dict[str, Any] = {}
    if eng:
        for key in ("dtype", "quantization", "kv_cache_dtype", "enable_prefix_caching"):
            value = getattr(eng, key)
            if value is not None:
                args[key] = value
        extra, _problems = parse_extra_args(eng.extra_args)  # problems stop the reconcile before this
        if "enforce_eager" in extra:
            args["enforce_eager"] = extra.pop("enforce_eager")  # a typed field in the app's contract
    extra.update(tool_engine_args(place.tool_call_parser))  # extraArgs may not set these (engine_check.py)
    if extra:
        args["extra"] = extra
    return args


def lora_args(spec: BigModelSpec, promotions: Promotions | None = None) -> dict[str, Any] | None:
    """LoRA slots of every replica, sized from the adapters (None: LoRA off).

    max_lora_rank is the smallest rank vLLM accepts that holds the largest adapter (and
    spec.engine.maxLoraRank, set it to add larger adapters later without an engine reload).
    A BigModel that expects FineTuneJobs to deploy to it — it declares `adapterClaims` or
    `engine.maxLoraRank`, or a job already targets it — gets LoRA from the start, at rank 16 at least,
    with a fixed room (`engine.maxLoras`, default 4 adapters per batch; at least 8 kept in the replica's
    CPU cache, beyond which vLLM evicts the least recently used): the first job's promotion, a second
    adapter name or a spec.adapters edit then changes no engine argument (vLLM cannot turn LoRA on
    without reloading the model). Each job counts from its creation, at its LoRA rank, so promoting one
    never changes these args; only a larger rank, or more adapters than that cache, does.
    """
    eng = spec.engine
    adapters = spec.adapters or []
    promoted = promotions or Promotions()
    wanted_rank = eng.max_lora_rank if eng and eng.max_lora_rank else None
    expects_jobs = bool(spec.adapter_claims) or wanted_rank is not None or promoted.adapter_names > 0
    if not adapters and not expects_jobs:
        return None
    floor = [DEFAULT_LORA_RANK] if expects_jobs else []
    rank = max([a.rank or DEFAULT_LORA_RANK for a in adapters] + [wanted_rank or 0, promoted.lora_rank or 0] + floor)
    allowed = sorted(int(str(v)) for v in ENGINE_ARGS["max_lora_rank"][1])
    max_lora_rank = next((v for v in allowed if v >= rank), allowed[-1])
    count = len(adapters) + 2 * promoted.adapter_names
    wanted_loras = eng.max_loras if eng and eng.max_loras else None
    if expects_jobs:  # fixed room: adding adapters or a second adapter name changes nothing up to it
        max_loras = wanted_loras or MAX_LORAS_DEFAULT
        return {
            "max_lora_rank": max_lora_rank,
            "max_loras": max_loras,
            "max_cpu_loras": max(max_loras, count, 2 * MAX_LORAS_DEFAULT),
        }
    max_loras = wanted_loras or max(1, min(count, MAX_LORAS_DEFAULT))
    return {"max_lora_rank": max_lora_rank, "max_loras": max_loras, "max_cpu_loras": max(max_loras, count)}


def adapters_config(spec: BigModelSpec, mounts: Mounts, promotions: Promotions | None = None) -> list[dict[str, Any]]:
    """Adapters by name and mounted path (pvc://) or image path (file://): the spec's own, then each
    route's versions (`<name>.<version>`), in a stable order so the same inputs render the same YAML."""
    out = []
    sources = [(a.name, a.uri) for a in spec.adapters or []]
    for route in (promotions or Promotions()).routes:
        sources += [(v.engine_name, v.uri) for v in route.versions()]
    for name, uri in sources:
        entry: dict[str, Any] = {"name": name, "uri": uri}
        local = mounts.local_path(uri)
        if local:
            entry["local_path"] = local
        out.append(entry)
    return out


def render_serve_args(
    name: str,
    spec: BigModelSpec,
    place: Placement,
    mounts: Mounts,
    config: OperatorConfig,
    promotions: Promotions | None = None,
) -> dict[str, Any]:
    """The application's `args` (heavy: a change reloads the engines), in the app's snake_case contract."""
    model: dict[str, Any] = {"uri": spec.model.uri, "served_name": served_name(name, spec)}
    if spec.model.revision:
        model["revision"] = spec.model.revision
    if spec.model.tokenizer:
        model["tokenizer"] = spec.model.tokenizer
    local = mounts.local_path(spec.model.uri)
    if local:
        model["local_path"] = local
    args: dict[str, Any] = {
        "model": model,
        "engine_args": engine_args(spec, place),
        "resources": {"accelerator": "gpu" if place.on_gpu else "cpu", "num_cpus": ENGINE_REPLICA_CPUS},
        "request_timeout_s": REQUEST_TIMEOUT_S,
        "hf_token_env": HF_TOKEN_ENV,
        "metrics": {"host": "0.0.0.0", "port": METRICS_PORT},
    }
    lora = lora_args(spec, promotions)
    if lora:
        args["lora"] = lora
    return args


def ingress_config(
    name: str, spec: BigModelSpec, adapters: list[dict[str, Any]], routes: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """user_config of the ingress deployment: keys, quotas, adapters, canary routes (applied in place)."""
    secret = api_keys_secret_name(name, spec)
    auth = {"mode": "api_keys", "keys_dir": API_KEYS_DIR} if secret else {"mode": "none"}
    out: dict[str, Any] = {"auth": auth, "adapters": adapters}
    if routes:
        out["routes"] = routes
    quotas = spec.auth.quotas if spec.auth else None
    if quotas:
        out["quotas"] = quotas.model_dump(exclude_none=True)
    if feedback := ingress_feedback(name, spec):
        out["feedback"] = feedback
    if scales_to_zero(spec):
        out["wake_timeout_s"] = wake_timeout_seconds(spec)
    return out


def deployment_options(
    name: str,
    spec: BigModelSpec,
    adapters: list[dict[str, Any]],
    config: OperatorConfig,
    routes: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The per-deployment options Serve applies to running replicas (no engine reload)."""
    scaling = scaling_args(spec, config)
    seqs = max_num_seqs(spec)
    queued = 2 * seqs  # one more batch waits per replica; beyond that the ingress answers 429
    engine: dict[str, Any] = {
        "name": ENGINE_DEPLOYMENT,
        "autoscaling_config": scaling,
        "max_ongoing_requests": seqs,
        "max_queued_requests": queued,
        "user_config": {"adapters": [dict(a) for a in adapters]},  # copies: no YAML anchors
    }
    ingress_user_config = ingress_config(name, spec, [dict(a) for a in adapters], routes)
    if router := request_router_config(spec, config):
        engine["request_router_config"] = router
        ingress_user_config["engine_router"] = router["request_router_class"]  # a change renews its handles
    return [
        {
            "name": INGRESS_DEPLOYMENT,
            # The ingress only forwards (num_cpus 0, no queue of its own): at least one replica takes the
            # request that wakes a scaled-to-zero engine; more only under very high request rates.
            "autoscaling_config": {
                "min_replicas": 1,
                "max_replicas": max(1, scaling["max_replicas"]),
                "target_ongoing_requests": INGRESS_TARGET_ONGOING,
            },
            "user_config": ingress_user_config,
        },
        engine,
    ]


def render_application(
    name: str,
    spec: BigModelSpec,
    place: Placement,
    mounts: Mounts,
    config: OperatorConfig,
    promotions: Promotions | None = None,
) -> dict[str, Any]:
    """One `applications[]` entry: import path, heavy args, light deployment options."""
    promoted = promotions or Promotions()
    args = render_serve_args(name, spec, place, mounts, config, promoted)
    adapters = adapters_config(spec, mounts, promoted)
    for claim in spec.adapter_claims or ():  # declared up front: a job's output there changes no pod template
        mounts.local_path(f"pvc://{claim}")
    for uri in promoted.mount_uris:  # every targeting FineTuneJob's output, mounted before it is promoted
        mounts.local_path(uri)
    routes = [route.render() for route in promoted.routes]
    deployments = deployment_options(name, spec, adapters, config, routes)
    if routes and promoted.report_to:  # bigmodel_serving.rollout_report: decisions into status
        namespace, bigmodel = promoted.report_to
        deployments[0]["user_config"]["rollout_report"] = {"namespace": namespace, "bigmodel": bigmodel}
    return {
        "name": name,
        "route_prefix": route_prefix(spec),
        "import_path": APP_IMPORT_PATH,
        "args": args,
        "deployments": deployments,
    }


def route_prefix(spec: BigModelSpec) -> str:
    """Where Serve mounts the application: `spec.expose.ingress.path` (default `/`).

    The Ingress forwards `<path>/v1` and `<path>/health` unchanged; Serve's proxy matches the prefix and
    moves it into the ASGI `root_path`, so the app still sees `/v1/...` (no controller-specific rewrite).
    """
    ingress = spec.expose.ingress if spec.expose else None
    return ((ingress.path if ingress else None) or "").rstrip("/") or "/"


def serve_config(application: dict[str, Any], config: OperatorConfig) -> dict[str, Any]:
    """serveConfigV2 with our one application, its proxies on `config.serve_port` (the containers' `serve` port).

    The proxy's own timeout sits just above the app's, so the app answers 504 with an OpenAI-style
    body before the proxy cuts the connection.
    """
    return {
        "proxy_location": "EveryNode",
        "http_options": {"host": "0.0.0.0", "port": config.serve_port, "request_timeout_s": REQUEST_TIMEOUT_S + 5},
        "applications": [application],
    }
