"""Shared building blocks of the v1alpha1 API: the camelCase base model and small reusable types.

The pydantic models in this package are the single source of truth for the CRDs: `bigmodel crds`
turns them into OpenAPI v3 schemas (see `bigmodel_operator.crdgen`). Field descriptions become the
`kubectl explain` text, so they are written for users.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.alias_generators import to_camel

GROUP = "bigmodel.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)

Quantity = Annotated[
    int | str,
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
    Field(description="A Kubernetes resource quantity, e.g. 4, 500m, 16Gi."),
]

# A DNS-1123 label: what Kubernetes accepts as a name of most objects.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


class ApiModel(BaseModel):
    """Base of every API object: snake_case in Python, camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        validate_assignment=False,
    )

    def to_wire(self) -> dict[str, Any]:
        """The object as the Kubernetes API carries it: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class SecretKeyRef(ApiModel):
    """A key in a Secret in the same namespace as the resource."""

    name: str = Field(
        description="Name of the Secret, in the resource's namespace.",
        max_length=253,
        pattern=DNS_SUBDOMAIN,
    )
    key: str = Field(
        description="Key inside the Secret's data.",
        max_length=253,
        pattern=r"^[-._a-zA-Z0-9]+$",
    )


class GpuResources(ApiModel):
    """GPUs for each replica (BigModel) or for the training pod (FineTuneJob)."""

    count: int | None = Field(
        default=None,
        ge=0,
        le=64,
        description=(
            "GPUs per replica. Leave empty to let the operator choose from its memory plan "
            "(status.plan.gpusPerReplica); set it to cap or pin the count."
        ),
    )
    product: str | None = Field(
        default=None,
        max_length=128,
        pattern=r"^[A-Za-z0-9][-A-Za-z0-9_.]*$",
        description=(
            "Value of the node label nvidia.com/gpu.product to schedule onto, "
            "e.g. NVIDIA-H100-80GB-HBM3. Also selects the GPU memory used by the plan."
        ),
    )
    memory_gib: float | None = Field(
        default=None,
        alias="memoryGiB",
        gt=0,
        le=4096,
        description="Memory of one GPU in GiB, for products the operator's table does not know.",
    )


class ResourcesSpec(ApiModel):
    """Compute resources of one replica / the training pod."""

    gpu: GpuResources | None = Field(default=None, description="GPU requirements.")
    cpu: Quantity | None = Field(default=None, description="CPU request and limit, e.g. 8.")
    memory: Quantity | None = Field(default=None, description="Memory request and limit, e.g. 64Gi.")


class Toleration(ApiModel):
    """A Kubernetes toleration (core/v1 Toleration)."""

    key: str | None = Field(default=None, max_length=316, description="Taint key to tolerate.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default Equal).")
    value: str | None = Field(default=None, max_length=63, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint."
    )


class Condition(ApiModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str = Field(description="Condition type, e.g. Ready.", max_length=316)
    status: Literal["True", "False", "Unknown"] = Field(description="True, False or Unknown.")
    reason: str = Field(default="", max_length=1024, description="CamelCase reason for the last transition.")
    message: str = Field(default="", max_length=32768, description="Human-readable details.")
    last_transition_time: datetime | None = Field(default=None, description="When the status last changed.")
    observed_generation: int | None = Field(
        default=None, description="The .metadata.generation this condition was computed from."
    )


NodeSelector = Annotated[
    dict[str, str],
    Field(max_length=32, description="Extra node labels the pods must match."),
]


def cel(*rules_and_messages: str) -> dict[str, Any]:
    """CEL validation rules for a model's schema: cel(rule1, message1, rule2, message2, ...)."""
    pairs = zip(rules_and_messages[::2], rules_and_messages[1::2], strict=True)
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in pairs]}
