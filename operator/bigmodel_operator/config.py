"""Operator configuration: images, defaults and switches, from a YAML file and environment variables.

Everything has a default, so `bigmodel operator` runs with no config at all. The Helm chart renders
this file from its values (`operatorConfig`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bigmodel_operator.api.base import QUANTITY_PATTERN, cpu_cores

FIELD_MANAGER = "bigmodel-operator"
RAY_RESERVED_PORTS = {6379: "GCS", 8080: "metrics", 8265: "dashboard", 10001: "client", 52365: "dashboard agent"}
"""Ports KubeRay gives the Ray containers: the Serve proxy cannot share one of them."""


class Images(BaseModel):
    """Container images the operator puts into the workloads it creates."""

    model_config = ConfigDict(extra="forbid")

    vllm: str = Field(default="ghcr.io/bigmodel-operator/serving-vllm:0.1.0", description="Ray + vLLM (GPU).")
    cpu: str = Field(
        default="ghcr.io/bigmodel-operator/serving-cpu:0.1.0",
        description="Ray + vLLM's CPU build (BigModels without GPUs).",
    )
    transformers: str | None = Field(
        default=None,
        description=(
            "Deprecated since 0.2: the old name of `cpu` (it has meant the vLLM CPU image since 0.1); "
            "used when `cpu` is not set."
        ),
    )

    @model_validator(mode="after")
    def _deprecated_transformers(self) -> Images:
        if self.transformers and "cpu" not in self.model_fields_set:
            self.cpu = self.transformers
        return self

    trainer: str = Field(default="ghcr.io/bigmodel-operator/trainer:0.1.0", description="torch + peft trainer.")


class Prices(BaseModel):
    """What the model's resources cost, for status.cost (per BigModel) and the operator's metrics."""

    model_config = ConfigDict(extra="forbid")

    currency: str = Field(default="USD", max_length=16, description="Currency of the prices below.")
    gpu_hour: dict[str, float] = Field(
        default_factory=dict,
        description="Price of one GPU-hour by nvidia.com/gpu.product, e.g. {NVIDIA-H100-80GB-HBM3: 2.49}.",
    )
    default_gpu_hour: float | None = Field(
        default=None, ge=0, description="Price of one GPU-hour of a product not in gpu_hour (empty: not priced)."
    )
    cpu_core_hour: float | None = Field(
        default=None, ge=0, description="Price of one CPU-core-hour, for models served on CPU (empty: not priced)."
    )
    window_hours: int = Field(default=24, ge=1, le=168, description="Hours in status.cost.window.")

    def gpu_price(self, product: str | None) -> float | None:
        if product and product in self.gpu_hour:
            return self.gpu_hour[product]
        return self.default_gpu_hour


class OperatorConfig(BaseModel):
    """Everything the operator can be told at start-up."""

    model_config = ConfigDict(extra="forbid")

    images: Images = Field(default_factory=Images)
    ray_version: str = Field(default="2.60.0", description="Ray version of the serving images.")
    gpu_products: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Extra or overridden GPU products: label -> {memoryGiB, ...}."
    )
    gpus_per_node: int = Field(default=8, ge=1, description="GPUs on one node, for the parallelism plan.")
    default_target_ongoing_requests: float = 16
    target_concurrency: int = Field(default=8, ge=1, description="Full-length sequences the KV plan reserves.")
    fetch_hub_config: bool = Field(
        default=True, description="Read config.json of hf:// models from the Hub (off in air-gapped clusters)."
    )
    hub_endpoint: str = "https://huggingface.co"
    resync_seconds: float = Field(default=120, gt=0, description="Period of the level-based resync.")
    max_concurrent_reconciles: int = Field(
        default=16,
        ge=1,
        description=(
            "Reconciles running at once (the rest wait their turn; one object never runs twice at once). Each "
            "makes a few API calls in sequence, so this also bounds the operator's requests in flight."
        ),
    )
    model_mount_root: str = "/mnt/bigmodel"
    serve_port: int = Field(
        default=8000,
        ge=1024,
        le=65535,
        description=(
            "Port of Ray Serve's HTTP proxy on every Ray pod: serveConfigV2 http_options.port, the containers' "
            "`serve` port (KubeRay's Serve Service and worker readiness probe use it), the Ingress backend and "
            "the NetworkPolicy. At least 1024: the pods run without NET_BIND_SERVICE."
        ),
    )
    serve_proxy: Literal["haproxy", "ray"] = Field(
        default="haproxy",
        description=(
            "What answers on serve_port in every Ray pod. `haproxy` (default): Ray Serve's HAProxy mode "
            "(RAY_SERVE_ENABLE_HA_PROXY, with direct ingress): haproxy, shipped with ray[serve], forwards straight "
            "to the ingress replicas' own HTTP ports; measured on vLLM's CPU build, TTFT at concurrency 1 about "
            "13 ms lower and requests/s at 8 about 1.5x than behind Ray's proxy (docs/benchmarks.md). `ray`: Ray "
            "Serve's Python HTTP proxy, one more hop in Python (the behaviour before 0.2). Part of every "
            "RayCluster's spec: a change starts a new Ray cluster for each model."
        ),
    )
    head_cpu: str = Field(
        default="2",
        pattern=QUANTITY_PATTERN,
        description="Ray head pod's CPU request; also its CPU limit unless head_cpu_limit is set.",
    )
    head_cpu_limit: str | None = Field(
        default=None,
        pattern=QUANTITY_PATTERN,
        description=(
            "Ray head pod's CPU limit, when it should be above head_cpu (unset: equal to it). A small head (say "
            "250m, so that two Ray clusters fit a node during an upgrade) held to its request starts slowly: "
            "Serve imports the application (vLLM) and starts its proxies on the head before any engine replica "
            "is placed, and at a 250m limit that took minutes and failed Serve's proxy health checks "
            "(docs/operations.md). A higher limit lets it borrow idle cores while it starts."
        ),
    )
    head_memory: str = "8Gi"
    head_ephemeral_storage: str = Field(
        default="8Gi",
        pattern=QUANTITY_PATTERN,
        description=(
            "Ray head pod's ephemeral-storage request and limit, and the size limit of its /tmp volume (Ray's "
            "session directory and logs)."
        ),
    )
    default_ephemeral_storage: str = Field(
        default="100Gi",
        pattern=QUANTITY_PATTERN,
        description=(
            "Local disk of a model or training pod whose weights the plan does not know (no config.json) and "
            "that downloads them (hf://, s3://, gs://, oci://); spec.resources.ephemeralStorage overrides it."
        ),
    )
    kuberay_operator_namespace: str = Field(
        default="kuberay-system",
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        max_length=63,
        description=(
            "Namespace of the KubeRay operator: the only namespace whose pods (those with "
            "`kuberay_operator_labels`) the Ray NetworkPolicy lets reach a model's Ray dashboard."
        ),
    )
    kuberay_operator_labels: dict[str, str] = Field(
        default_factory=lambda: {"app.kubernetes.io/name": "kuberay-operator"},
        min_length=1,
        description="Labels of the KubeRay operator's pods (KubeRay's Helm chart sets app.kubernetes.io/name).",
    )
    check_secrets: bool = Field(
        default=True,
        description=(
            "Check that referenced token Secrets exist (needs `get secrets`). Off: the check is skipped and a "
            "missing Secret shows up as the pod's CreateContainerConfigError instead of GatedModelNoToken."
        ),
    )
    worker_idle_timeout_seconds: int = Field(
        default=300,
        ge=10,
        le=86_400,
        description=(
            "Ray autoscaler's idle timeout of a worker pod (autoscalerOptions.idleTimeoutSeconds): how long after "
            "its last engine replica stopped the pod, and its GPU, is released. Part of every RayCluster's spec: "
            "a change starts a new Ray cluster for each model."
        ),
    )
    download_stall_seconds: int = Field(
        default=300, ge=30, description="A weight download without progress for this long gets a DownloadStalled Event."
    )
    prices: Prices = Field(default_factory=Prices, description="Prices for status.cost.")
    metrics_address: str | None = Field(
        default=None, description="host:port for the operator's Prometheus /metrics (e.g. 0.0.0.0:8081); off if empty."
    )

    @model_validator(mode="after")
    def _head_cpu_limit_not_below_request(self) -> OperatorConfig:
        if self.head_cpu_limit is not None and cpu_cores(self.head_cpu_limit) < cpu_cores(self.head_cpu):
            raise ValueError(
                f"head_cpu_limit {self.head_cpu_limit} is below head_cpu {self.head_cpu}: Kubernetes refuses a "
                "pod whose limit is below its request"
            )
        return self

    @field_validator("serve_port")
    @classmethod
    def _serve_port_free(cls, port: int) -> int:
        if port in RAY_RESERVED_PORTS:
            raise ValueError(f"{port} is Ray's {RAY_RESERVED_PORTS[port]} port; pick another serve_port")
        return port


def load_config(path: str | None = None) -> OperatorConfig:
    """Load the config file (if any), then apply environment overrides (BIGMODEL_OFFLINE=1 etc.)."""
    data: dict[str, Any] = {}
    path = path or os.environ.get("BIGMODEL_OPERATOR_CONFIG")
    if path:
        data = yaml.safe_load(Path(path).read_text()) or {}
    config = OperatorConfig.model_validate(data)
    if os.environ.get("BIGMODEL_OFFLINE", "") in {"1", "true", "yes"}:
        config = config.model_copy(update={"fetch_hub_config": False})
    return config
