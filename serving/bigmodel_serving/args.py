"""The typed contract between the operator and the serving application (pydantic only).

The operator renders a BigModel into a RayService whose `serveConfigV2` holds one application,
validated here by `ServeApplication`:

    applications:
      - name: <bigmodel name>
        route_prefix: /
        import_path: bigmodel_serving.app:build_app
        args: <ServeArgs>                      # heavy: a change reloads every engine replica
        deployments:                           # light: Serve applies these in place
          - name: BigModelIngress              # INGRESS_DEPLOYMENT
            autoscaling_config: {min_replicas, max_replicas, target_ongoing_requests}
            user_config: <IngressConfig>       # keys, quotas, body cap, request log, adapters, routes
          - name: BigModelEngine               # ENGINE_DEPLOYMENT (vLLM through ray.serve.llm)
            autoscaling_config: {min_replicas, max_replicas, target_ongoing_requests}
            max_ongoing_requests: <n>
            max_queued_requests: <n>
            request_router_config: <RequestRouting>   # optional: prefix-cache-aware replica choice
            user_config: <EngineConfig>        # adapters (name -> mounted path)
        # BigModelMetrics (METRICS_DEPLOYMENT): one replica on the Ray head serving GET /metrics on
        # args.metrics.port, a port of its own (no options to render).

Why the split: Ray Serve hashes an application's `import_path`, `runtime_env` and `args` into its
code version, and a new code version restarts every replica (the model loads again). Deployment
options (`autoscaling_config`, `max_ongoing_requests`, `max_queued_requests`, `user_config`) are
applied to the running replicas; `user_config` reaches them through `reconfigure()`. So `args`
holds only what needs a new engine (the model, vLLM's engine arguments, LoRA slots, resources),
and everything a user edits often (replica bounds, API keys, quotas, adapters) lives in
`deployments`. This module imports only pydantic, so the operator and its tests can check a
rendering without ray, torch or vllm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from bigmodel_contract.safe_paths import check_uri, resolve_local

APP_IMPORT_PATH = "bigmodel_serving.app:build_app"
INGRESS_DEPLOYMENT = "BigModelIngress"
ENGINE_DEPLOYMENT = "BigModelEngine"
METRICS_DEPLOYMENT = "BigModelMetrics"
DEFAULT_METRICS_PORT = 8079
URI_SCHEMES = ("hf", "s3", "gs", "pvc", "file", "oci")

# Settings the typed fields (or the app itself) own; `EngineArgs.extra` may not set them.
OWNED_ENGINE_KWARGS = {
    "model": "model.uri",
    "served_model_name": "model.served_name",
    "tokenizer": "model.tokenizer",
    "revision": "model.revision",
    "dtype": "engine_args.dtype",
    "quantization": "engine_args.quantization",
    "kv_cache_dtype": "engine_args.kv_cache_dtype",
    "max_model_len": "engine_args.max_model_len",
    "max_num_seqs": "engine_args.max_num_seqs",
    "gpu_memory_utilization": "engine_args.gpu_memory_utilization",
    "tensor_parallel_size": "engine_args.tensor_parallel_size",
    "pipeline_parallel_size": "engine_args.pipeline_parallel_size",
    "enable_prefix_caching": "engine_args.enable_prefix_caching",
    "enforce_eager": "engine_args.enforce_eager",
    "enable_lora": "lora",
    "max_lora_rank": "lora.max_lora_rank",
    "max_loras": "lora.max_loras",
    "max_cpu_loras": "lora.max_cpu_loras",
    "distributed_executor_backend": "the app (Ray on GPU, mp on CPU)",
    "host": "Ray Serve (it binds the address)",
    "port": "Ray Serve (it binds the port)",
    "api_key": "IngressConfig.auth",
    "lora_modules": "EngineConfig.adapters",
    "disable_log_stats": "the app (engine metrics need the stats)",
}

_M = TypeVar("_M", bound=BaseModel)
JSONValue = str | int | float | bool | None | list[Any] | dict[str, Any]


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _contained(value: str | None) -> str | None:
    """Refuse a location that could leave its mount (a `..` segment, also %-encoded or with backslashes)
    or that hides characters (whitespace, controls, bidi overrides): bigmodel_contract's rule, the one
    admission and the operator applied; the app checks again where it opens files."""
    if value is not None:
        check_uri(value)
    return value


def _local_path_of(uri: str, local_path: str | None) -> Path | None:
    """The real directory: a pvc:// mount resolved inside its claim (a symlink on the volume cannot lead
    out), a file:// path in the image, or None for remote sources."""
    return resolve_local(uri, local_path or None)


# --------------------------------------------------------------------------------------------
# args (heavy: hashed into the code version)
# --------------------------------------------------------------------------------------------


class ModelSource(_Args):
    """Where the model's weights come from, and the name clients use for it."""

    uri: str = Field(description="hf://org/name, s3://, gs://, pvc://claim/path, file:///abs/path or oci://.")
    revision: str | None = Field(default=None, description="Branch, tag or commit (hf:// only).")
    served_name: str = Field(min_length=1, max_length=200, description="The model name clients send in `model`.")
    tokenizer: str | None = Field(default=None, description="Tokenizer location when not the model's.")
    local_path: str | None = Field(
        default=None, description="Where the operator mounted the weights in the pod, if it did."
    )

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        scheme = urlparse(uri).scheme
        if scheme not in URI_SCHEMES:
            raise ValueError(f"model.uri scheme must be one of {', '.join(URI_SCHEMES)}; got {uri!r}")
        return uri

    _paths_contained = field_validator("uri", "tokenizer", "local_path")(_contained)

    @field_validator("served_name")
    @classmethod
    def _no_colon(cls, name: str) -> str:
        if ":" in name:
            raise ValueError("served_name must not contain ':' (it separates the adapter name)")
        return name

    def resolved_local_path(self) -> Path | None:
        """The local directory holding the weights: `local_path`, or the path of a file:// URI."""
        return _local_path_of(self.uri, self.local_path)

    def hub_id(self) -> str | None:
        """`org/name` for an hf:// URI, else None."""
        parsed = urlparse(self.uri)
        if parsed.scheme != "hf":
            return None
        return f"{parsed.netloc}{parsed.path}".strip("/")


class EngineArgs(_Args):
    """vLLM engine arguments: a typed subset, plus `extra` checked against the installed vLLM.

    `None` leaves vLLM's own default. `extra` takes any other `vllm.engine.arg_utils.EngineArgs`
    (or OpenAI-frontend) argument by its Python name, e.g. `{"max_num_batched_tokens": 8192}`;
    `build_app` refuses names the installed vLLM does not have, and names a typed field owns.
    """

    max_model_len: int | None = Field(default=None, gt=0, description="Context length (prompt + output).")
    max_num_seqs: int | None = Field(
        default=None, gt=0, description="Sequences one replica batches at once (the planner's concurrency)."
    )
    dtype: str = "auto"
    quantization: str | None = None
    kv_cache_dtype: str | None = None
    gpu_memory_utilization: float = Field(
        default=0.9, gt=0, le=1, description="Fraction of GPU memory (on CPU: of host RAM) vLLM reserves."
    )
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    enable_prefix_caching: bool | None = None
    enforce_eager: bool | None = None
    extra: dict[str, JSONValue] = Field(default_factory=dict, description="More vLLM engine arguments by name.")

    @field_validator("extra")
    @classmethod
    def _not_owned(cls, extra: dict[str, JSONValue]) -> dict[str, JSONValue]:
        for name in extra:
            if name in OWNED_ENGINE_KWARGS:
                raise ValueError(f"engine_args.extra.{name} is set through {OWNED_ENGINE_KWARGS[name]}, not extra")
            if not name.isidentifier():
                raise ValueError(f"engine_args.extra: {name!r} is not an engine argument name (use snake_case)")
        return extra

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size


class LoraArgs(_Args):
    """LoRA slots of every engine replica (the adapters themselves are in `EngineConfig`)."""

    max_lora_rank: int = Field(default=16, ge=1, le=512, description="Largest adapter rank a replica accepts.")
    max_loras: int = Field(default=1, ge=1, le=256, description="Adapters one batch can mix (GPU slots).")
    max_cpu_loras: int | None = Field(
        default=None, ge=1, description="Adapters kept loaded per replica (vLLM's CPU cache); default max_loras."
    )


class ReplicaResources(_Args):
    """What one engine replica runs on."""

    accelerator: Literal["gpu", "cpu"] = Field(default="gpu", description="cpu runs vLLM's CPU build.")
    num_cpus: float = Field(default=1, ge=0, description="CPUs of the replica actor (the engine's first bundle).")

    @property
    def is_cpu(self) -> bool:
        return self.accelerator == "cpu"


class MetricsListener(_Args):
    """Where the metrics deployment serves GET /metrics: a port the Ingress and the Serve Service do not expose."""

    host: str = Field(default="0.0.0.0", min_length=1, max_length=253, description="Address to bind.")
    port: int = Field(default=DEFAULT_METRICS_PORT, ge=1, le=65_535)


class ServeArgs(_Args):
    """The application's `args`: everything whose change needs a new engine."""

    model: ModelSource
    engine_args: EngineArgs = Field(default_factory=EngineArgs)
    lora: LoraArgs | None = Field(default=None, description="None: LoRA off (adapters need it on).")
    resources: ReplicaResources = Field(default_factory=ReplicaResources)
    request_timeout_s: float = Field(
        default=600, gt=0, le=86_400, description="A request still running after this gets 504."
    )
    hf_token_env: str | None = Field(
        default="HF_TOKEN", description="Name of the env var that carries the HF token (never the token)."
    )
    metrics: MetricsListener | None = Field(
        default_factory=MetricsListener,
        description="GET /metrics (vLLM's engine metrics, per-key usage, canary, feedback) on the Ray head; "
        "null: no metrics listener.",
    )

    @model_validator(mode="after")
    def _cpu_single_worker(self) -> ServeArgs:
        if self.resources.is_cpu and self.engine_args.world_size > 1:
            raise ValueError(
                "resources.accelerator cpu runs one engine worker: tensor/pipeline parallel size must be 1"
            )
        return self


# --------------------------------------------------------------------------------------------
# user_config (light: applied to running replicas by reconfigure())
# --------------------------------------------------------------------------------------------


class AdapterSource(_Args):
    """A LoRA adapter, served as the model name `<served_name>:<name>`."""

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    uri: str = Field(description="file:///dir, or s3://bucket/prefix (downloaded by the replica on first use).")
    local_path: str | None = Field(default=None, description="Where the operator mounted the adapter.")

    _paths_contained = field_validator("uri", "local_path")(_contained)

    def resolved_local_path(self) -> Path | None:
        """The local directory holding the adapter: `local_path`, or the path of a file:// URI."""
        return _local_path_of(self.uri, self.local_path)

    @model_validator(mode="after")
    def _local(self) -> AdapterSource:
        if self.resolved_local_path() is None and not self.uri.startswith("s3://"):
            raise ValueError(f"adapter {self.name!r}: needs local_path, a file:// or an s3:// uri")
        return self


def _check_unique_adapters(adapters: list[AdapterSource]) -> list[AdapterSource]:
    names = [adapter.name for adapter in adapters]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"adapter names must be unique; repeated: {', '.join(duplicates)}")
    return adapters


RouteMode = Literal["auto", "promote", "rollback", "pin"]


class AdapterRoute(_Args):
    """A name clients call (`<served_name>:<name>`) split between two engine adapters (a canary).

    `split: key` gives each API key `candidate` or `stable` by a stable hash of (key name, route,
    candidate), so a key keeps its version while `weight` holds and raising `weight` only moves keys to
    the candidate; `split: request` draws every request afresh (one key, or `auth.mode: none`).
    `stable: null` is the base model (a first fine-tune is canaried against it); `candidate: null`
    sends every key to `stable`. `mode: auto` decides by the sequential test of canary_rule.py (roll
    back when the candidate is shown worse, promote when it is shown within the margins; the false
    rollback rate is at most `false_rollback_rate`), and resolves a canary still undecided
    `deadline_s` after `started_at` by `on_deadline`; `promote` (weight 1), `rollback` (weight 0) and
    `pin` (keep the weight in force, decide nothing) override it by hand.
    """

    name: str = Field(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    stable: str | None = Field(default=None, description="Engine adapter name; null: the base model.")
    candidate: str | None = Field(default=None, description="Engine adapter name of the version on trial.")
    weight: float = Field(default=0.2, ge=0, le=1, description="The candidate's share of API keys or requests.")
    mode: RouteMode = "auto"
    split: Literal["key", "request"] = Field(default="key", description="Sticky per API key, or per request.")
    min_requests: int = Field(default=20, ge=1, le=1_000_000, description="Observations on each side before deciding.")
    false_rollback_rate: float = Field(
        default=0.05, gt=0, le=0.5, description="The most often a candidate as good as stable is rolled back."
    )
    max_error_rate_increase: float = Field(
        default=0.02, gt=0, le=1, description="Promote once the error rate is shown to rise by less than this."
    )
    max_latency_ratio: float = Field(
        default=1.5, gt=1, le=1000, description="Roll back when shown slower than this x stable, promote when faster."
    )
    max_bad_answer_increase: float = Field(
        default=0.1, gt=0, le=1, description="Margin of the share of bad rated answers (rating 1-2 or corrected)."
    )
    quality: Literal["auto", "off", "guard", "required"] = Field(
        default="auto",
        description="Ratings as a signal: required (promotion needs them), guard (rollback only), off; "
        "auto: required when feedback is enabled, else off.",
    )
    started_at: float | None = Field(default=None, ge=0, description="When the canary began (seconds since epoch).")
    deadline_s: float = Field(default=86_400, gt=0, le=90 * 86_400, description="An undecided canary ends after this.")
    on_deadline: Literal["rollback", "promote"] = Field(default="rollback", description="How an undecided canary ends.")

    @model_validator(mode="after")
    def _two_versions(self) -> AdapterRoute:
        if self.candidate is not None and self.candidate == self.stable:
            raise ValueError(f"route {self.name!r}: candidate and stable are the same adapter {self.stable!r}")
        return self


def _check_routes(routes: list[AdapterRoute], adapters: list[AdapterSource]) -> None:
    names = [route.name for route in routes]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"route names must be unique; repeated: {', '.join(duplicates)}")
    adapter_names = {adapter.name for adapter in adapters}
    for route in routes:
        if route.name in adapter_names:
            raise ValueError(f"route {route.name!r} has the name of an adapter (clients could not tell them apart)")
        for role in ("stable", "candidate"):
            version = getattr(route, role)
            if version is not None and version not in adapter_names:
                raise ValueError(f"route {route.name!r}: {role} {version!r} is not one of the adapters")


class AuthConfig(_Args):
    """API keys for /v1/*. On by default: `mode: none` must be said explicitly.

    `keys_dir` is a mounted Secret: each file is one key, its file name the key's name (the name
    shows in metrics and the request log; the key never does). Files are re-read when they change
    (Kubernetes swaps the `..data` symlink on a Secret update), so keys rotate without a restart.
    A missing or empty directory accepts no key (fail closed).
    """

    mode: Literal["api_keys", "none"] = "api_keys"
    keys_dir: str | None = None

    @model_validator(mode="after")
    def _dir_when_keys(self) -> AuthConfig:
        if self.mode == "api_keys" and not self.keys_dir:
            raise ValueError("auth.keys_dir is required when auth.mode is api_keys (use mode: none to serve openly)")
        return self


class Quota(_Args):
    """Per-key rate limits; None means unlimited."""

    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1, description="Prompt + completion tokens.")


class QuotaConfig(_Args):
    """`default` applies to every key without its own entry in `keys` (by key name)."""

    default: Quota = Field(default_factory=Quota)
    keys: dict[str, Quota] = Field(default_factory=dict, max_length=1024)

    def for_key(self, name: str) -> Quota:
        return self.keys.get(name, self.default)

    @property
    def enabled(self) -> bool:
        quotas = [self.default, *self.keys.values()]
        return any(q.requests_per_minute or q.tokens_per_minute for q in quotas)


class RequestLogArgs(_Args):
    """Optional request/response log (JSON lines) for the feedback loop; PII redacted by default."""

    enabled: bool = False
    path: str | None = None
    redact_pii: bool = True

    @model_validator(mode="after")
    def _path_when_enabled(self) -> RequestLogArgs:
        if self.enabled and not self.path:
            raise ValueError("request_log.path is required when request_log.enabled is true")
        return self


class FeedbackArgs(_Args):
    """POST /v1/feedback and its sink (bigmodel_serving.feedback): answered completions are kept for
    `ttl_s` (at most `max_entries` and `max_bytes`), feedback is appended as redacted chat JSONL."""

    enabled: bool = False
    sink_path: str | None = Field(default=None, description="A directory (a mounted PVC) for the JSONL files.")
    sink_uri: str | None = Field(default=None, description="file:///dir or an object store (s3://bucket/prefix).")
    sink_root: str | None = Field(
        default=None,
        description="The mount `sink_path` lies in (the claim's): the sink is resolved inside it, symlinks followed.",
    )
    ttl_s: float = Field(default=86_400, gt=0, le=30 * 86_400, description="How long an answer takes feedback.")
    max_entries: int = Field(default=50_000, ge=1, le=10_000_000)
    max_bytes: int = Field(default=128 * 1_048_576, ge=1024, le=16 * 1024 * 1_048_576)

    _paths_contained = field_validator("sink_path", "sink_uri", "sink_root")(_contained)

    @model_validator(mode="after")
    def _one_sink(self) -> FeedbackArgs:
        if self.sink_path and self.sink_uri:
            raise ValueError("feedback: set sink_path or sink_uri, not both")
        if self.enabled and not (self.sink_path or self.sink_uri):
            raise ValueError("feedback.sink_path or feedback.sink_uri is required when feedback.enabled is true")
        return self


class RolloutReportArgs(_Args):
    """Where the ingress reports automatic canary decisions (bigmodel_serving.rollout_report): the
    status of this BigModel and Events on it. Rendered by the operator; absent: decisions stay local."""

    namespace: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    bigmodel: str = Field(min_length=1, max_length=253, pattern=r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")


class IngressConfig(_Args):
    """`user_config` of the ingress deployment: applied in place, no engine reload."""

    auth: AuthConfig = Field(default_factory=AuthConfig)
    quotas: QuotaConfig = Field(default_factory=QuotaConfig)
    max_body_bytes: int = Field(default=1_048_576, gt=0, le=64 * 1_048_576)
    request_log: RequestLogArgs = Field(default_factory=RequestLogArgs)
    feedback: FeedbackArgs = Field(default_factory=FeedbackArgs)
    adapters: list[AdapterSource] = Field(default_factory=list, max_length=256)
    routes: list[AdapterRoute] = Field(default_factory=list, max_length=256, description="Canary routes.")
    rollout_report: RolloutReportArgs | None = None
    wake_timeout_s: float = Field(
        default=300,
        gt=0,
        le=3_600,
        description=(
            "A request that finds no engine replica (scaled to zero, or restarting) is held this long while one "
            "starts; past it the client gets 503 `model_not_ready`."
        ),
    )
    engine_router: str | None = Field(
        default=None,
        max_length=200,
        description=(
            "The engine deployment's request router class, as its request_router_config names it (null: Serve's "
            "default). Serve builds a handle's router once, so when this changes the ingress takes new handles."
        ),
    )

    @field_validator("adapters")
    @classmethod
    def _unique_adapters(cls, adapters: list[AdapterSource]) -> list[AdapterSource]:
        return _check_unique_adapters(adapters)

    @model_validator(mode="after")
    def _routes_name_adapters(self) -> IngressConfig:
        _check_routes(self.routes, self.adapters)
        return self


class EngineConfig(_Args):
    """`user_config` of the engine deployment: the adapters it may load (loaded on first use)."""

    adapters: list[AdapterSource] = Field(default_factory=list, max_length=256)

    @field_validator("adapters")
    @classmethod
    def _unique_adapters(cls, adapters: list[AdapterSource]) -> list[AdapterSource]:
        return _check_unique_adapters(adapters)


# --------------------------------------------------------------------------------------------
# the serveConfigV2 application entry
# --------------------------------------------------------------------------------------------


class Autoscaling(_Args):
    """Replica bounds: fixed when min_replicas == max_replicas."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    initial_replicas: int | None = Field(default=None, ge=0)
    target_ongoing_requests: float = Field(default=16, gt=0)
    downscale_to_zero_delay_s: float | None = Field(
        default=None, ge=0, description="Scale to zero: seconds without requests before the last replica stops."
    )
    upscale_delay_s: float | None = Field(default=None, ge=0)
    downscale_delay_s: float | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _min_le_max(self) -> Autoscaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must be <= max_replicas")
        return self


# Ours (bigmodel_serving.routing: adapter requests stay on the adapter's replicas); Ray's own class is still
# accepted, as applications rendered before ours name it.
PrefixCacheRouter = Literal[
    "bigmodel_serving.routing:AdapterAffinePrefixRouter", "ray.serve.llm.request_router:PrefixCacheAffinityRouter"
]
PREFIX_CACHE_ROUTER: PrefixCacheRouter = "bigmodel_serving.routing:AdapterAffinePrefixRouter"


class RequestRouting(_Args):
    """The engine deployment's `request_router_config`: which Ray Serve request router picks its replica."""

    request_router_class: PrefixCacheRouter = PREFIX_CACHE_ROUTER
    request_router_kwargs: dict[str, JSONValue] = Field(default_factory=dict)


class DeploymentOptions(_Args):
    """One entry of the application's `deployments` list (Serve applies these in place)."""

    name: Literal["BigModelIngress", "BigModelEngine"]
    autoscaling_config: Autoscaling | None = None
    max_ongoing_requests: int | None = Field(default=None, ge=1)
    max_queued_requests: int | None = Field(default=None, ge=-1)
    request_router_config: RequestRouting | None = None
    user_config: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _user_config_shape(self) -> DeploymentOptions:
        if self.user_config is not None:
            model = IngressConfig if self.name == INGRESS_DEPLOYMENT else EngineConfig
            model.model_validate(self.user_config)
        if self.request_router_config is not None and self.name != ENGINE_DEPLOYMENT:
            raise ValueError("request_router_config picks an engine replica: only BigModelEngine takes one")
        return self


class ServeApplication(_Args):
    """One `applications[]` entry of serveConfigV2, as the operator renders it."""

    name: str = Field(min_length=1)
    route_prefix: str = "/"
    import_path: Literal["bigmodel_serving.app:build_app"] = "bigmodel_serving.app:build_app"
    args: ServeArgs
    deployments: list[DeploymentOptions] = Field(default_factory=list)
    runtime_env: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ServeApplication:
        names = [deployment.name for deployment in self.deployments]
        if len(names) != len(set(names)):
            raise ValueError("each deployment may be listed once")
        if self.engine_config().adapters and self.args.lora is None:
            raise ValueError("adapters need args.lora (LoRA slots in the engine)")
        ingress_names = [adapter.name for adapter in self.ingress_config().adapters]
        engine_names = [adapter.name for adapter in self.engine_config().adapters]
        if ingress_names != engine_names:
            raise ValueError("the ingress and engine user_config must list the same adapters")
        return self

    def _deployment(self, name: str) -> DeploymentOptions | None:
        return next((deployment for deployment in self.deployments if deployment.name == name), None)

    def ingress_config(self) -> IngressConfig:
        entry = self._deployment(INGRESS_DEPLOYMENT)
        raw = entry.user_config if entry and entry.user_config is not None else {"auth": {"mode": "none"}}
        return IngressConfig.model_validate(raw)

    def engine_config(self) -> EngineConfig:
        entry = self._deployment(ENGINE_DEPLOYMENT)
        return EngineConfig.model_validate(entry.user_config if entry and entry.user_config else {})


class InvalidServeArgsError(ValueError):
    """The serve args do not match the contract; the message lists every wrong field by path."""


def parse_serve_args(raw: object) -> ServeArgs:
    """Validate `raw` (the application's `args`) and return `ServeArgs`.

    Raises `InvalidServeArgsError` with one line per problem, e.g.
    `engine_args.max_num_seqs: Input should be greater than 0 (got 0)`.
    """
    return _parse(ServeArgs, raw, "args")


def parse_ingress_config(raw: object) -> IngressConfig:
    return _parse(IngressConfig, raw, "ingress user_config")


def parse_engine_config(raw: object) -> EngineConfig:
    return _parse(EngineConfig, raw, "engine user_config")


def parse_application(raw: object) -> ServeApplication:
    return _parse(ServeApplication, raw, "application")


def _parse(model: type[_M], raw: object, what: str) -> _M:
    if isinstance(raw, model):
        return raw
    try:
        return model.model_validate(raw)
    except ValidationError as error:
        raise InvalidServeArgsError(format_validation_error(error, what)) from None


def format_validation_error(error: ValidationError, what: str = "args") -> str:
    """One readable line per error, each with its dotted field path."""
    lines = [f"invalid bigmodel serve {what}:"]
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(root)"
        got = f" (got {item['input']!r})" if item["type"] != "missing" and not isinstance(item["input"], dict) else ""
        lines.append(f"  {path}: {item['msg']}{got}")
    return "\n".join(lines)
