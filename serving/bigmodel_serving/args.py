"""The typed arguments of the serving application: the contract between the operator and the app.

The operator renders a BigModel into a RayService whose `serveConfigV2` holds one application:

    applications:
      - name: <bigmodel name>
        route_prefix: /
        import_path: bigmodel_serving.app:build_app
        args: <ServeArgs.model_dump(mode="json")>

`bigmodel_serving.app.build_app` parses `args` with `ServeArgs`. This module imports only pydantic,
so the operator (and its tests) can build and check the contract without ray, torch or vllm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

URI_SCHEMES = ("hf", "s3", "gs", "pvc", "file", "oci")


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSource(_Args):
    """Where the model's weights come from, and the name clients use for it."""

    uri: str = Field(description="hf://org/name, s3://, gs://, pvc://claim/path, file:///abs/path or oci://.")
    revision: str | None = Field(default=None, description="Branch, tag or commit (hf:// only).")
    served_name: str = Field(min_length=1, description="The model name clients send in `model`.")
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

    @field_validator("served_name")
    @classmethod
    def _no_colon(cls, name: str) -> str:
        if ":" in name:
            raise ValueError("served_name must not contain ':' (it separates the adapter name)")
        return name

    def resolved_local_path(self) -> Path | None:
        """The local directory holding the weights: `local_path`, or the path of a file:// URI."""
        if self.local_path:
            return Path(self.local_path)
        parsed = urlparse(self.uri)
        if parsed.scheme == "file":
            return Path(unquote(parsed.path))
        return None

    def hub_id(self) -> str | None:
        """`org/name` for an hf:// URI, else None."""
        parsed = urlparse(self.uri)
        if parsed.scheme != "hf":
            return None
        return f"{parsed.netloc}{parsed.path}".strip("/")


class EngineArgs(_Args):
    """Inference-engine settings; vLLM reads all of them, the transformers engine a few."""

    max_model_len: int | None = Field(default=None, gt=0, description="Context length (prompt + output).")
    dtype: str = "auto"
    quantization: str | None = None
    gpu_memory_utilization: float = Field(default=0.9, gt=0, le=1)
    tensor_parallel_size: int = Field(default=1, ge=1)
    pipeline_parallel_size: int = Field(default=1, ge=1)
    enable_prefix_caching: bool = True
    extra_args: list[str] = Field(
        default_factory=list, description="More vLLM engine flags, as `--name=value` or `--flag`."
    )


class AdapterSource(_Args):
    """A LoRA adapter, served as the model name `<served_name>:<name>`."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    uri: str
    local_path: str | None = None

    def resolved_local_path(self) -> Path | None:
        """The local directory holding the adapter: `local_path`, or the path of a file:// URI."""
        if self.local_path:
            return Path(self.local_path)
        parsed = urlparse(self.uri)
        if parsed.scheme == "file":
            return Path(unquote(parsed.path))
        return None


class AuthArgs(_Args):
    """API-key authentication for /v1/*."""

    api_keys_file: str | None = Field(
        default=None,
        description="A mounted Secret file, one key per line ('#' comments); re-read when it changes.",
    )


class LimitArgs(_Args):
    """Request limits; requests beyond them get a 4xx, never a 5xx."""

    max_body_bytes: int = Field(default=1_048_576, gt=0)
    max_n: int = Field(default=8, ge=1)
    request_timeout_s: float = Field(default=600, gt=0)
    max_ongoing_requests: int = Field(default=32, ge=1, description="Requests generating at once per replica.")
    max_queued_requests: int = Field(default=64, ge=0, description="Requests waiting per replica before 429.")


class ScalingArgs(_Args):
    """Replica count: fixed when min_replicas == max_replicas, autoscaled otherwise."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=1, ge=1)
    target_ongoing_requests: float = Field(default=16, gt=0)

    @model_validator(mode="after")
    def _min_le_max(self) -> ScalingArgs:
        if self.min_replicas > self.max_replicas:
            raise ValueError("scaling.min_replicas must be <= scaling.max_replicas")
        return self


class ReplicaResources(_Args):
    """Ray resources of one replica."""

    num_gpus: float = Field(default=0, ge=0)
    num_cpus: float = Field(default=1, ge=0)


class RequestLogArgs(_Args):
    """Optional request/response log (JSON lines) for the feedback loop."""

    enabled: bool = False
    path: str | None = None
    redact_pii: bool = True

    @model_validator(mode="after")
    def _path_when_enabled(self) -> RequestLogArgs:
        if self.enabled and not self.path:
            raise ValueError("request_log.path is required when request_log.enabled is true")
        return self


class ServeArgs(_Args):
    """Everything the serving application needs; rendered by the operator, parsed by `build_app`."""

    model: ModelSource
    engine: Literal["vllm", "transformers"]
    engine_args: EngineArgs = Field(default_factory=EngineArgs)
    adapters: list[AdapterSource] = Field(default_factory=list)
    auth: AuthArgs = Field(default_factory=AuthArgs)
    limits: LimitArgs = Field(default_factory=LimitArgs)
    scaling: ScalingArgs = Field(default_factory=ScalingArgs)
    replica_resources: ReplicaResources = Field(default_factory=ReplicaResources)
    request_log: RequestLogArgs = Field(default_factory=RequestLogArgs)
    hf_token_env: str | None = Field(
        default="HF_TOKEN", description="Name of the env var that carries the HF token (never the token)."
    )

    @model_validator(mode="after")
    def _unique_adapter_names(self) -> ServeArgs:
        names = [adapter.name for adapter in self.adapters]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"adapter names must be unique; repeated: {', '.join(duplicates)}")
        return self

    def model_names(self) -> list[str]:
        """The names clients may send: the base model first, then `<served_name>:<adapter>`."""
        base = self.model.served_name
        return [base, *(f"{base}:{adapter.name}" for adapter in self.adapters)]


class InvalidServeArgsError(ValueError):
    """The serve args do not match `ServeArgs`; the message lists every wrong field by path."""


def parse_serve_args(raw: object) -> ServeArgs:
    """Validate `raw` (the `args` of the serve config) and return `ServeArgs`.

    Raises `InvalidServeArgsError` with one line per problem, e.g.
    `limits.max_n: Input should be greater than or equal to 1 (got 0)`.
    """
    if isinstance(raw, ServeArgs):
        return raw
    try:
        return ServeArgs.model_validate(raw)
    except ValidationError as error:
        raise InvalidServeArgsError(format_validation_error(error)) from None


def format_validation_error(error: ValidationError) -> str:
    """One readable line per error, each with its dotted field path."""
    lines = ["invalid bigmodel serve args:"]
    for item in error.errors():
        path = ".".join(str(part) for part in item["loc"]) or "(root)"
        got = f" (got {item['input']!r})" if item["type"] != "missing" and not isinstance(item["input"], dict) else ""
        lines.append(f"  {path}: {item['msg']}{got}")
    return "\n".join(lines)
