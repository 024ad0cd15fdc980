"""BigModel: "serve this model" — becomes a KubeRay RayService running vLLM behind an Ingress."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from bigmodel_operator.api.base import (
    INLINE_CONFIG_LIMITS,
    QUALIFIED_NAME,
    REVISION_PATTERN,
    ApiModel,
    Condition,
    InlineModelConfig,
    LabelName,
    NodeSelector,
    ObjectName,
    Quantity,
    ResourcesSpec,
    SafeLocation,
    SecretKeyRef,
    Toleration,
    cel,
    location_rules,
    map_keys_match,
    re2_literal,
    rules,
)
from bigmodel_operator.api.cost_status import CostStatus, UsageReport
from bigmodel_operator.api.feedback import FeedbackSpec
from bigmodel_operator.api.startup_status import ReplicaStartupReport, StartupTimeline
from bigmodel_operator.api.vllm_tool_parsers import TOOL_CALL_PARSERS
from bigmodel_operator.planning import ServingPlan

MODEL_URI_PATTERN = (
    r"^(hf://[^/\s]+/[^/\s]+|s3://\S+|gs://\S+|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/\S*)?|file:///\S*|oci://\S+)$"
)
SERVED_NAME_PATTERN = r"^[A-Za-z0-9][-A-Za-z0-9_./]*$"
TOOL_PARSER_OFF = "none"
TOOL_PARSER_CHOICES = (*TOOL_CALL_PARSERS, TOOL_PARSER_OFF)
_NOT_ON_CPU = (
    "!has(self.resources) || !has(self.resources.gpu) || !has(self.resources.gpu.count) || "
    "self.resources.gpu.count != 0"
)
"""CEL: true unless resources.gpu.count is 0 (the CPU engine)."""
CPU_PARALLEL_MESSAGE = (
    "{field} must be 1 (or left out) when resources.gpu.count is 0: vLLM's CPU engine runs one model copy in "
    "one process per replica; set resources.gpu.count to use tensor or pipeline parallelism"
)


class ConfigMapKeyRef(ApiModel):
    """A key in a ConfigMap in the BigModel's namespace."""

    name: ObjectName = Field(description="ConfigMap name.")
    key: str = Field(
        default="config.json",
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
        description="Key holding the model's config.json (default config.json).",
    )


class ModelSpec(ApiModel):
    """Where the model comes from and how clients address it."""

    model_config = ConfigDict(
        # Not CEL: CEL cannot type the free-form `config` (its values are any JSON), so a rule that names it
        # does not compile. The apiserver says "must not validate the schema (not)"; the operator names both.
        json_schema_extra={"not": {"required": ["config", "configMapRef"]}}
    )

    uri: Annotated[str, SafeLocation] = Field(
        max_length=2048,
        pattern=MODEL_URI_PATTERN,
        description=(
            "Model location: hf://org/name (Hugging Face Hub), s3://bucket/path, gs://bucket/path, "
            "pvc://claim/path (a PersistentVolumeClaim in this namespace), file:///path (a path inside "
            "the serving image), or oci://registry/repo:tag. No '..' path segments."
        ),
        json_schema_extra=location_rules("model.uri"),
    )
    revision: Annotated[str | None, SafeLocation] = Field(
        default=None,
        max_length=256,
        pattern=REVISION_PATTERN,
        description="Hub revision (branch, tag or commit) for hf:// models; no spaces or control characters.",
        json_schema_extra=location_rules("model.revision"),
    )
    served_name: str | None = Field(
        default=None,
        max_length=256,
        pattern=SERVED_NAME_PATTERN,
        description="Name clients pass as `model` in OpenAI requests (default: the BigModel's name).",
    )
    tokenizer: Annotated[str | None, SafeLocation] = Field(
        default=None,
        max_length=2048,
        pattern=MODEL_URI_PATTERN,
        description="Tokenizer location when it differs from the model (same URI schemes, no '..' segments).",
        json_schema_extra=location_rules("model.tokenizer"),
    )
    config: InlineModelConfig | None = Field(
        default=None,
        description=(
            "The model's config.json inline, for sources the operator cannot read (pvc://, file://, "
            "s3://, gs://, oci://). Used only for the GPU memory plan. A real one is a few KiB: "
            f"{INLINE_CONFIG_LIMITS}."
        ),
    )
    config_map_ref: ConfigMapKeyRef | None = Field(
        default=None, description="A ConfigMap holding the model's config.json, instead of `config` (not both)."
    )

    @model_validator(mode="after")
    def _one_config(self) -> ModelSpec:
        if self.config is not None and self.config_map_ref is not None:
            raise ValueError("set model.config or model.configMapRef, not both")
        return self


class EngineSpec(ApiModel):
    """A typed subset of vLLM's engine arguments."""

    max_model_len: int | None = Field(
        default=None,
        ge=16,
        le=10_485_760,
        description="Longest prompt + completion in tokens. Empty: the largest that fits (see status.plan).",
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] | None = Field(
        default=None, description="Weight and activation dtype (default auto: the model's own)."
    )
    quantization: Literal["awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors", "marlin"] | None = Field(
        default=None, description="Weight quantization method (default: from the model's config)."
    )
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3", "fp8_e5m2"] | None = Field(
        default=None, description="KV cache dtype (default auto: same as the model)."
    )
    gpu_memory_utilization: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="Fraction of each GPU's memory vLLM may use (default 0.9).",
    )
    tensor_parallel_size: int | None = Field(
        default=None, ge=1, le=64, description="GPUs one model copy is split across (default: from the plan)."
    )
    pipeline_parallel_size: int | None = Field(
        default=None, ge=1, le=64, description="Pipeline stages (default: from the plan, usually 1)."
    )
    enable_prefix_caching: bool | None = Field(
        default=None, description="Reuse KV cache across requests sharing a prefix (default true)."
    )
    max_num_seqs: int | None = Field(
        default=None,
        ge=1,
        le=4096,
        description=(
            "Sequences one replica batches at once (default 256, vLLM's own). Also the requests a replica "
            "takes at once; up to twice as many more wait, beyond that clients get 429."
        ),
    )
    max_lora_rank: int | None = Field(
        default=None,
        ge=1,
        le=512,
        description=(
            "Largest LoRA rank the engine accepts (default: the largest adapters[].rank), rounded up to a "
            "rank vLLM supports. Set it to add larger adapters later without reloading the engine."
        ),
    )
    max_loras: int | None = Field(
        default=None,
        ge=1,
        le=256,
        description="Adapters one batch can mix (default: the number of adapters, at most 4; 4 when maxLoraRank or "
        "adapterClaims is set, so adding adapters reloads nothing).",
    )
    tool_call_parser: str | None = Field(
        default=None,
        max_length=64,
        description=(
            "vLLM's tool-call parser (`--tool-call-parser`, with `--enable-auto-tool-choice`), one the pinned "
            "vLLM has. Empty: chosen from the model's family in config.json (llama3_json for Llama 3.1+, "
            "mistral, hermes for Qwen, ...; hermes when the family is not known), so tool_choice auto, required "
            "and named work out of the box. `none` turns tool calling off (requests with tool_choice answer 400)."
        ),
        json_schema_extra={"enum": list(TOOL_PARSER_CHOICES)},
    )
    extra_args: list[str] | None = Field(
        default=None,
        max_length=64,
        description=(
            'Further vLLM engine arguments, e.g. ["--max-num-batched-tokens=16384", "--enforce-eager"]. '
            "Checked against the engine arguments of the vLLM version the operator was built for: unknown "
            "or removed flags, wrong value types and flags that duplicate a typed field are refused with "
            "reason InvalidEngineArgs before anything is deployed."
        ),
    )

    @field_validator("tool_call_parser")
    @classmethod
    def _known_parser(cls, value: str | None) -> str | None:
        if value is not None and value not in TOOL_PARSER_CHOICES:
            raise ValueError(f"engine.toolCallParser {value!r} is not a tool-call parser of the pinned vLLM")
        return value


class RuntimeSpec(ApiModel):
    """Which engine serves the model and in which image."""

    engine: Literal["vllm"] | None = Field(
        default=None,
        description=(
            "vllm, the only engine: CUDA GPUs, or vLLM's CPU build when resources.gpu.count is 0 "
            "(development and tests)."
        ),
    )
    image: Annotated[str | None, SafeLocation] = Field(
        default=None,
        max_length=1024,
        description="Serving image (default: the operator's configured image for the engine).",
        json_schema_extra=location_rules("runtime.image"),
    )


class ScalingSpec(ApiModel):
    """Either a fixed `replicas`, or autoscaling between `minReplicas` and `maxReplicas`."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            "!(has(self.replicas) && (has(self.minReplicas) || has(self.maxReplicas)))",
            "set either replicas or minReplicas/maxReplicas, not both",
            "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
            "minReplicas must not exceed maxReplicas",
        )
    )

    replicas: int | None = Field(
        default=None, ge=0, le=1000, description="Fixed number of model replicas. Excludes min/max."
    )
    min_replicas: int | None = Field(
        default=None, ge=0, le=1000, description="Autoscaling lower bound (0 allows scale to zero)."
    )
    max_replicas: int | None = Field(default=None, ge=1, le=1000, description="Autoscaling upper bound.")
    target_ongoing_requests: float | None = Field(
        default=None,
        gt=0,
        le=100_000,
        description="Requests in flight per replica the autoscaler aims for (default 16).",
    )
    idle_seconds: int | None = Field(
        default=None,
        ge=10,
        le=604_800,
        description=(
            "Scale to zero (minReplicas 0 or replicas 0): seconds without requests before the last engine replica "
            "stops and frees its GPU (default 900: a GPU cold start costs minutes, so a short lull is not worth "
            "one). The Ray worker pod goes after the cluster's node idle timeout (operator config "
            "workerIdleTimeoutSeconds); the head and the ingress stay, so /v1/models, 401 and 429 answer as usual."
        ),
    )
    wake_timeout_seconds: int | None = Field(
        default=None,
        ge=1,
        le=3_600,
        description=(
            "Scale to zero: how long a request that finds no engine replica is held while one starts (default "
            "300: a GPU replica's cold start with weights from the cache, inside OpenAI clients' 600 s timeout). "
            "Held requests are answered normally, streams included; past the bound they get 503 "
            "`model_not_ready` with Retry-After. The engine keeps starting."
        ),
    )
    upscale_delay_seconds: int | None = Field(
        default=None,
        ge=0,
        le=3600,
        description="How long the load must stay above the target before a replica is added (Serve's default 30).",
    )
    downscale_delay_seconds: int | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description=(
            "How long the load must stay below the target before a replica is removed (Serve's default 600). "
            "A removed replica drains: its running requests finish first."
        ),
    )


class RoutingSpec(ApiModel):
    """How the ingress picks the engine replica for a request (Ray Serve LLM's request routers)."""

    policy: Literal["prefixCache", "leastLoaded"] | None = Field(
        default=None,
        description=(
            "prefixCache: send a request to the replica that served the longest prefix of its prompt "
            "(Ray Serve LLM's PrefixCacheAffinityRouter), so vLLM's prefix cache answers its shared system "
            "prompt or conversation history without a new prefill; it falls back to the less loaded of two "
            "replicas when their loads differ by more than targetOngoingRequests, and requests for an "
            "adapter first go to replicas that hold it. leastLoaded: the less loaded of two random replicas "
            "(Serve's default, and the default here: with Ray 2.60 a router change rolls the engine replicas, so "
            "the choice is made when the BigModel is created, not by a later bounds edit)."
        ),
    )


class AdapterSpec(ApiModel):
    """A LoRA adapter served alongside the base model as `<servedName>:<name>`."""

    name: LabelName = Field(description="Adapter name, unique in the list.")
    uri: Annotated[str, SafeLocation] = Field(
        max_length=2048,
        pattern=MODEL_URI_PATTERN,
        description=(
            "Adapter location in PEFT layout: pvc://claim/path (mounted), file:///path (in the image), or "
            "s3://bucket/prefix (each replica downloads it on first use; keys from credentials.storageSecretName). "
            "No '..' segments."
        ),
        json_schema_extra=location_rules("adapters[].uri"),
    )
    rank: int | None = Field(
        default=None,
        ge=1,
        le=512,
        description="The adapter's LoRA rank (`r` in adapter_config.json), which sizes the engine's LoRA slots "
        "(default 16).",
    )

    @field_validator("uri")
    @classmethod
    def _from_disk(cls, uri: str) -> str:
        if not uri.startswith(("pvc://", "file://", "s3://")):
            raise ValueError("adapters are loaded from disk or S3: use pvc://, file:// or s3:// URIs")
        return uri


class RolloutSpec(ApiModel):
    """A hand override of the canary of one adapter (FineTuneJob deployTo versions)."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            "!has(self.action) || self.action != 'pin' || has(self.version)",
            "action pin needs version (the FineTuneJob whose adapter to serve)",
        )
    )

    adapter: LabelName = Field(description="The adapter name (deployTo.adapterName).")
    action: Literal["auto", "promote", "rollback", "pin"] = Field(
        description=(
            "auto: the ingress promotes or rolls back the candidate after its window; promote: the candidate "
            "(or `version`) becomes stable now, and later versions skip the canary while this entry stays; "
            "rollback: the candidate (or `version`) is taken out of service and marked RolledBack; pin: only "
            "`version` serves, newer versions wait."
        )
    )
    version: ObjectName | None = Field(
        default=None,
        description="A version: the name of the FineTuneJob that produced it.",
    )


INGRESS_PATH_PATTERN = r"^/$|^(/[-A-Za-z0-9_.~]+)+$"
"""`/` or segments: no empty segment (`//`, a trailing `/`), nothing Ray Serve's route_prefix or an Ingress
Prefix path refuses (braces, `%`, spaces)."""
DOT_SEGMENT_RE2 = r"(^|/)\.\.?(/|$)"
DOT_SEGMENT_MESSAGE = "expose.ingress.path must not contain '.' or '..' segments (the Ingress refuses them)"


def _refuse_dot_segments(value: str | None) -> str | None:
    if value is not None and re.search(DOT_SEGMENT_RE2, value):
        raise ValueError(DOT_SEGMENT_MESSAGE)
    return value


class IngressSpec(ApiModel):
    """An Ingress in front of the OpenAI endpoint."""

    model_config = ConfigDict(
        json_schema_extra=cel("!has(self.tlsSecretName) || has(self.host)", "tlsSecretName needs host")
    )

    host: ObjectName | None = Field(default=None, description="Host name, e.g. llm.example.com.")
    class_name: ObjectName | None = Field(default=None, description="IngressClass to use (a DNS subdomain).")
    tls_secret_name: ObjectName | None = Field(default=None, description="TLS Secret for `host`.")
    path: Annotated[str | None, AfterValidator(_refuse_dot_segments)] = Field(
        default=None,
        max_length=256,
        pattern=INGRESS_PATH_PATTERN,
        description=(
            "Path prefix in front of /v1 and /health (default /), e.g. /team-a: clients call /team-a/v1/... "
            "The Serve application is mounted at this prefix, so no rewrite annotation is needed. '/' or "
            "'/'-separated segments of letters, digits, '-', '_', '.', '~'; no trailing '/', no '.' or '..' segment."
        ),
        json_schema_extra=cel(f"!self.matches('{re2_literal(DOT_SEGMENT_RE2)}')", DOT_SEGMENT_MESSAGE),
    )
    annotations: dict[str, Annotated[str, Field(max_length=4096)]] | None = Field(
        default=None,
        max_length=32,
        description=(
            "Extra annotations, e.g. for the ingress controller. Keys are qualified names "
            "(optional DNS prefix and '/', then letters, digits, '-', '_', '.')."
        ),
        json_schema_extra=map_keys_match(QUALIFIED_NAME, "a qualified name (optional DNS prefix/, then name)"),
    )


class ExposeSpec(ApiModel):
    """How the endpoint is reached from outside the cluster."""

    ingress: IngressSpec | None = Field(default=None, description="Create an Ingress.")
    network_policy: bool | None = Field(
        default=None,
        description=(
            "Render a NetworkPolicy that opens only the Serve port to the cluster (Ray's GCS, dashboard and "
            "client ports stay reachable from the model's own Ray pods and, for the dashboard, the KubeRay "
            "operator). Default true; set false when your own policies cover the namespace."
        ),
    )


class QuotaLimits(ApiModel):
    """Rate limits of one API key, enforced across all ingress replicas; empty means unlimited."""

    requests_per_minute: int | None = Field(default=None, ge=1, le=10_000_000, description="Requests per minute.")
    tokens_per_minute: int | None = Field(
        default=None, ge=1, le=10_000_000_000, description="Prompt + completion tokens per minute."
    )


class QuotaSpec(ApiModel):
    """Per-key quotas: over its quota a key gets 429 with Retry-After; other keys are unaffected."""

    default: QuotaLimits | None = Field(default=None, description="Limits of every key without its own entry.")
    keys: dict[str, QuotaLimits] | None = Field(
        default=None,
        max_length=256,
        description="Limits by key name (the key's data key in the API-keys Secret).",
        json_schema_extra=map_keys_match(r"^[-._a-zA-Z0-9]+$", "a Secret data key"),
    )


class AuthSpec(ApiModel):
    """API keys of the OpenAI endpoint: on unless `mode: none` says otherwise."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            "!has(self.mode) || self.mode != 'none' || (!has(self.secretName) && !has(self.quotas))",
            "mode none serves without keys: secretName and quotas need mode apiKeys",
        )
    )

    mode: Literal["apiKeys", "none"] | None = Field(
        default=None,
        description="apiKeys (default): /v1/* needs a key; none: anyone who reaches the endpoint may use it.",
    )
    secret_name: ObjectName | None = Field(
        default=None,
        description=(
            "Secret holding the API keys: each data key is a key's name (shown in metrics and logs), its value "
            "the key. Edits take effect without a restart. Empty: the operator creates <name>-api-keys with "
            "one generated key named `default`, owned by this BigModel and never changed afterwards."
        ),
    )
    quotas: QuotaSpec | None = Field(default=None, description="Per-key requests and tokens per minute.")


class CredentialsSpec(ApiModel):
    """Credentials for pulling the model; never copied into other objects."""

    hf_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key with a Hugging Face token, for gated hf:// models."
    )
    storage_secret_name: ObjectName | None = Field(
        default=None,
        description=(
            "Secret whose keys become the Ray pods' environment, for s3:// models, adapters and feedback "
            "sinks: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, and for an S3-compatible store "
            "AWS_ENDPOINT_URL (and AWS_REGION)."
        ),
    )


class WeightCacheSpec(ApiModel):
    """A PersistentVolumeClaim shared by every replica of this namespace's models (and their trainers)."""

    claim_name: ObjectName = Field(
        description=(
            "A ReadWriteMany claim in this namespace (NFS, EFS, Filestore, CephFS, ...): s3:// and hf:// weights "
            "are downloaded into it once and every replica, every wake from zero and FineTuneJobs of this model "
            "read them from there. hf:// revisions are resolved to a commit, s3:// objects are checked by size "
            "and ETag, so a cached copy is exact. Mounted at /mnt/bigmodel/weight-cache."
        ),
    )
    max_size: Quantity | None = Field(
        default=None,
        description=(
            "Bound of the cache (default: no bound beyond the claim's size). Before a download, replicas evict "
            "the least recently used models not used for an hour until the new one fits."
        ),
    )


class BigModelSpec(ApiModel):
    """Desired state of a served model."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": cel(
                "!has(self.engine) || !has(self.engine.tensorParallelSize) || !has(self.resources) || "
                "!has(self.resources.gpu) || !has(self.resources.gpu.count) || self.resources.gpu.count % "
                "(self.engine.tensorParallelSize * (has(self.engine.pipelineParallelSize) ? "
                "self.engine.pipelineParallelSize : 1)) == 0",
                "resources.gpu.count must be a multiple of engine.tensorParallelSize x engine.pipelineParallelSize",
                "!has(self.adapters) || self.adapters.all(a, a.uri.startsWith('pvc://') || a.uri.startsWith('file://') "
                "|| a.uri.startsWith('s3://'))",
                "adapters are loaded from disk or S3: use pvc://, file:// or s3:// URIs",
            )["x-kubernetes-validations"]
            + rules(
                f"{_NOT_ON_CPU} || !has(self.engine) || !has(self.engine.tensorParallelSize) || "
                "self.engine.tensorParallelSize == 1",
                CPU_PARALLEL_MESSAGE.format(field="engine.tensorParallelSize"),
                ".engine.tensorParallelSize",
                f"{_NOT_ON_CPU} || !has(self.engine) || !has(self.engine.pipelineParallelSize) || "
                "self.engine.pipelineParallelSize == 1",
                CPU_PARALLEL_MESSAGE.format(field="engine.pipelineParallelSize"),
                ".engine.pipelineParallelSize",
            )["x-kubernetes-validations"]
        }
    )

    model: ModelSpec = Field(description="The model to serve.")
    engine: EngineSpec | None = Field(default=None, description="Engine (vLLM) arguments.")
    runtime: RuntimeSpec | None = Field(default=None, description="Engine choice and image.")
    resources: ResourcesSpec | None = Field(default=None, description="Resources per replica.")
    scaling: ScalingSpec | None = Field(default=None, description="Replica count or autoscaling bounds.")
    routing: RoutingSpec | None = Field(default=None, description="How requests are spread over replicas.")
    adapters: list[AdapterSpec] | None = Field(
        default=None,
        max_length=64,
        description="LoRA adapters served with the model.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    adapter_claims: list[ObjectName] | None = Field(
        default=None,
        max_length=16,
        description=(
            "PersistentVolumeClaims mounted read-only on every engine pod from the start, at "
            "/mnt/bigmodel/pvc/<claim>: list the claims FineTuneJobs write the adapters they deploy here "
            "to (spec.output.uri pvc://<claim>/...). Setting it also gives the engine LoRA slots from the start "
            "(rank 16, or engine.maxLoraRank), so the first promotion reloads nothing. A deployTo job whose "
            "claim is not mounted yet adds the mount, a pod-template change: KubeRay then replaces the Ray "
            "cluster once and the base model loads again (Warning Event AdapterClaimNotMounted)."
        ),
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    rollouts: list[RolloutSpec] | None = Field(
        default=None,
        max_length=64,
        description=(
            "Hand overrides of adapter canaries (promote now, roll back, pin a version). The operator never "
            "writes this field; promotion state is in status.adapters."
        ),
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["adapter"]},
    )
    expose: ExposeSpec | None = Field(default=None, description="External exposure.")
    auth: AuthSpec | None = Field(default=None, description="Endpoint authentication.")
    credentials: CredentialsSpec | None = Field(default=None, description="Model pull credentials.")
    node_selector: NodeSelector | None = None
    tolerations: list[Toleration] | None = Field(
        default=None, max_length=32, description="Extra tolerations for the model pods."
    )
    feedback: FeedbackSpec | None = Field(
        default=None, description="POST /v1/feedback and the sink its records go to (off by default)."
    )
    weight_cache: WeightCacheSpec | None = Field(
        default=None, description="Shared weight cache: download a model once, not on every replica and wake."
    )

    @model_validator(mode="after")
    def _cpu_runs_one_engine_process(self) -> BigModelSpec:
        gpu = self.resources.gpu if self.resources else None
        if gpu is None or gpu.count != 0 or self.engine is None:
            return self
        for field, size in (
            ("tensorParallelSize", self.engine.tensor_parallel_size),
            ("pipelineParallelSize", self.engine.pipeline_parallel_size),
        ):
            if size is not None and size != 1:
                raise ValueError(CPU_PARALLEL_MESSAGE.format(field=f"engine.{field}"))
        return self


class AdapterVersionStatus(ApiModel):
    """One version of a deployTo adapter, as the operator serves it."""

    name: str = Field(description="Adapter name clients call (`<servedName>:<name>`).")
    version: str = Field(description="The FineTuneJob that produced it.")
    engine_name: str | None = Field(default=None, description="Name the engine loads it under (`<name>.<version>`).")
    uri: str | None = Field(default=None, description="Where the adapter was written.")
    phase: Literal["Candidate", "Stable", "RolledBack", "Refused", "Retired", "Waiting"] = Field(
        description=(
            "Candidate: takes `weight` of the traffic; Stable: takes the rest; RolledBack: taken out by hand, "
            "never served again; Refused: its eval gate failed; Retired: a newer version became stable; "
            "Waiting: held back by a pin."
        )
    )
    weight: float | None = Field(default=None, description="Share of the adapter's traffic (0..1).")
    since: str | None = Field(default=None, description="When it entered this phase.")
    message: str | None = Field(default=None, description="Why it is in this phase.")
    rank: int | None = Field(default=None, description="LoRA rank (sizes the engine's slots after its job is gone).")
    completed: str | None = Field(default=None, description="When its FineTuneJob finished (orders the versions).")


class RolloutDecision(ApiModel):
    """An automatic canary decision, written by the ingress (never by the operator), read by the operator."""

    route: str = Field(description="The adapter name clients call.")
    stable: str | None = Field(default=None, description="Engine name of the stable version it was compared to.")
    decision: Literal["promote", "rollback"] = Field(description="What the ingress decided.")
    reason: str = Field(description="Why, with the numbers.")
    time: str = Field(description="When (RFC 3339).")


class ScaleChange(ApiModel):
    """The last change of the engine replica count that Serve reported."""

    from_replicas: int = Field(alias="from", description="Engine replicas before.")
    to_replicas: int = Field(alias="to", description="Engine replicas Serve scales to.")
    reason: str = Field(description="Why: the autoscaler followed the load, or a bound in spec.scaling moved.")
    time: str = Field(description="When the operator saw Serve start it (RFC 3339).")


class BigModelStatus(ApiModel):
    """Observed state of a served model."""

    observed_generation: int | None = Field(default=None, description="Generation last reconciled.")
    conditions: list[Condition] | None = Field(
        default=None,
        description="Ready, Planned, RayServiceReady, IngressReady, Degraded.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    replicas: int | None = Field(
        default=None, description="Engine replicas desired: Serve's autoscaling target (or spec.scaling.replicas)."
    )
    ready_replicas: int | None = Field(default=None, description="Engine replicas running and serving.")
    last_scaled: ScaleChange | None = Field(
        default=None, description="The last replica change Serve reported (also an Event ScaledUp/ScaledDown)."
    )
    url: str | None = Field(default=None, description="Base URL of the OpenAI API (…/v1).")
    plan: ServingPlan | None = Field(default=None, description="GPU memory plan.")
    selector: str | None = Field(default=None, description="Label selector of the pods (for /scale).")
    ray_service: str | None = Field(default=None, description="Name of the RayService child.")
    adapters: list[AdapterVersionStatus] | None = Field(
        default=None, description="Versions of deployTo adapters: which serve, with which weight, and why."
    )
    startup: StartupTimeline | None = Field(
        default=None, description="The cold start in progress: each phase with its duration (empty when none)."
    )
    last_cold_start: StartupTimeline | None = Field(
        default=None, description="The last finished (or failed) cold start: where the time went."
    )
    replica_startups: dict[str, ReplicaStartupReport] | None = Field(
        default=None,
        max_length=64,
        description=(
            "What each engine replica reports about its start, by Serve replica id; written by the replicas, "
            "pruned by the operator when their pod is gone."
        ),
    )
    resolved_revision: str | None = Field(
        default=None,
        max_length=256,
        description="hf:// models: the commit spec.model.revision (default main) resolved to, the exact cache key.",
    )
    usage: UsageReport | None = Field(
        default=None, description="Requests and tokens counted by the serving application (written by it)."
    )
    cost: CostStatus | None = Field(default=None, description="GPU/CPU-seconds, idle time, tokens and cost.")
    rollout_decisions: dict[str, RolloutDecision] | None = Field(
        default=None,
        description=(
            "Automatic canary decisions by candidate engine name (`<name>.<version>`), merge-patched by the "
            "ingress; the operator turns them into `adapters` phases and never writes this field."
        ),
    )


class BigModel(ApiModel):
    """A BigModel custom resource."""

    api_version: Literal["bigmodel.io/v1alpha1"] = "bigmodel.io/v1alpha1"
    kind: Literal["BigModel"] = "BigModel"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: BigModelSpec
    status: BigModelStatus | None = None
