"""Shared building blocks of the v1alpha1 API: the camelCase base model and small reusable types.

The pydantic models in this package are the single source of truth for the CRDs: `bigmodel crds`
turns them into OpenAPI v3 schemas (see `bigmodel_operator.crdgen`). Field descriptions become the
`kubectl explain` text, so they are written for users.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
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
# A DNS-1035 label: what KubeRay requires of RayCluster/RayService/RayJob names (utils/validation.go
# calls IsDNS1035Label): lowercase letters, digits and '-', starting with a letter, at most 63.
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# A qualified name (label and annotation keys): an optional DNS-subdomain prefix and '/', then a
# name of alphanumerics, '-', '_' and '.', starting and ending alphanumeric (at most 63).
QUALIFIED_NAME = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
# A Hub revision (branch, tag or commit): printable, no spaces or control characters.
REVISION_PATTERN = r"^[A-Za-z0-9][-A-Za-z0-9_.+@/=]*$"
# `..` as a whole path segment: refused in every URI and path (it would climb out of its mount).
PARENT_SEGMENT_RE2 = r"(^|/)\.\.(/|$)"


def cel(*rules_and_messages: str) -> dict[str, Any]:
    """CEL validation rules for a model's schema: cel(rule1, message1, rule2, message2, ...)."""
    pairs = zip(rules_and_messages[::2], rules_and_messages[1::2], strict=True)
    return {"x-kubernetes-validations": [{"rule": r, "message": m} for r, m in pairs]}


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
            "BigModel: the most GPUs one replica may use; the plan picks the smallest layout that fits within "
            "it, and worker pods, engine parallelism and Serve all use exactly status.plan.gpusPerReplica "
            "(set engine.tensorParallelSize to use more). 0 serves on CPU with vLLM's CPU build. "
            "FineTuneJob: the GPUs of the training pod. Empty: from the plan."
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
    """A Kubernetes toleration (core/v1 Toleration), validated as the apiserver validates pods."""

    model_config = ConfigDict(
        json_schema_extra=cel(
            "!has(self.operator) || self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "a toleration with operator Exists must not set value",
            "has(self.key) || (has(self.operator) && self.operator == 'Exists')",
            "a toleration without key must use operator Exists (it then tolerates every taint)",
            "!has(self.tolerationSeconds) || (has(self.effect) && self.effect == 'NoExecute')",
            "tolerationSeconds is only valid with effect NoExecute",
        )
    )

    key: str | None = Field(default=None, max_length=316, pattern=QUALIFIED_NAME, description="Taint key to tolerate.")
    operator: Literal["Exists", "Equal"] | None = Field(default=None, description="Exists or Equal (default Equal).")
    value: str | None = Field(default=None, max_length=63, pattern=LABEL_VALUE, description="Taint value for Equal.")
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = Field(
        default=None, description="Taint effect to match; empty matches all effects."
    )
    toleration_seconds: int | None = Field(
        default=None, description="For NoExecute: how long the pod stays bound after the taint."
    )

    @model_validator(mode="after")
    def _as_the_apiserver(self) -> Toleration:
        if self.operator == "Exists" and self.value:
            raise ValueError("a toleration with operator Exists must not set value")
        if not self.key and self.operator != "Exists":
            raise ValueError("a toleration without key must use operator Exists")
        if self.toleration_seconds is not None and self.effect != "NoExecute":
            raise ValueError("tolerationSeconds is only valid with effect NoExecute")
        return self


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


def map_keys_match(pattern: str, what: str) -> dict[str, Any]:
    """A CEL rule on a map: every key matches `pattern` (RE2)."""
    return {
        "x-kubernetes-validations": [
            {"rule": f"self.all(k, k.matches('{re2_literal(pattern)}'))", "message": f"every key must be {what}"}
        ]
    }


def re2_literal(pattern: str) -> str:
    """`pattern` written inside a single-quoted CEL string literal."""
    return pattern.replace("\\", "\\\\").replace("'", "\\'")


_PARENT_SEGMENT = re.compile(PARENT_SEGMENT_RE2)


def has_parent_segment(value: str) -> bool:
    """Whether `value` has a `..` path segment (the operator's own check, after the CEL rule)."""
    return bool(_PARENT_SEGMENT.search(value))


def _refuse_parent_segments(value: str | None) -> str | None:
    if value is not None and has_parent_segment(value):
        raise ValueError(f"{value!r} must not contain '..' path segments (it would leave its volume)")
    return value


NoParentSegments = AfterValidator(_refuse_parent_segments)
"""Pydantic half of `no_parent_segments`: the same rule when the operator parses a spec."""


def no_parent_segments(what: str = "a path") -> dict[str, Any]:
    """A CEL rule on a string: no `..` path segment (e.g. pvc://claim/../../etc)."""
    return {
        "x-kubernetes-validations": [
            {
                "rule": f"!self.matches('{re2_literal(PARENT_SEGMENT_RE2)}')",
                "message": f"{what} must not contain '..' path segments (it would leave its volume)",
            }
        ]
    }


NodeSelector = Annotated[
    dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]],
    Field(
        max_length=32,
        description="Extra node labels the pods must match.",
        json_schema_extra=map_keys_match(QUALIFIED_NAME, "a label key (optional DNS prefix/, then name)"),
    ),
]
