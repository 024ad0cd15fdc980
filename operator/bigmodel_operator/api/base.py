"""Shared building blocks of the v1alpha1 API: the camelCase base model and small reusable types.

The pydantic models in this package are the single source of truth for the CRDs: `bigmodel crds`
turns them into OpenAPI v3 schemas (see `bigmodel_operator.crdgen`). Field descriptions become the
`kubectl explain` text, so they are written for users.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic.alias_generators import to_camel

from bigmodel_contract.fetch_addresses import literal_host_problem
from bigmodel_contract.safe_paths import path_problem, uri_text_problem

GROUP = "bigmodel.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)


def cpu_cores(quantity: str) -> float:
    """A CPU quantity (2, 0.5, 250m, 1k) in cores."""
    text = quantity.strip()
    factors = {"n": 1e-9, "u": 1e-6, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
    if text[-1:] in factors:
        return float(text[:-1]) * factors[text[-1]]
    return float(text)


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
ObjectName = Annotated[str, Field(max_length=253, pattern=DNS_SUBDOMAIN)]
"""A DNS subdomain: the name of a Secret, ConfigMap, claim or BigModel in the same namespace, or a host name."""
LabelName = Annotated[str, Field(max_length=63, pattern=DNS_LABEL)]
"""A DNS-1123 label: adapter and Kueue queue names."""
# A Hub revision (branch, tag or commit): printable, no spaces or control characters.
REVISION_PATTERN = r"^[A-Za-z0-9][-A-Za-z0-9_.+@/=]*$"
# `..` as a whole path segment, also percent-encoded (%2e, %252e), with backslashes or fullwidth forms as
# the separator or dots: refused in every URI and path (it would climb out of its mount). CEL cannot
# decode, so the rule spells out the encodings; the operator and the workloads decode and check with
# bigmodel_contract.safe_paths.path_problem, which catches everything this does and more.
_SEP = r"(/|\\|／|＼|%(25)*(2f|5c))"
_DOT = r"(\.|．|﹒|․|%(25)*2e)"
PARENT_SEGMENT_RE2 = rf"(?i)(^|{_SEP})({_DOT}{_DOT}|‥)({_SEP}|$)"
# Any Unicode whitespace, control, format (zero-width, bidi override), private-use or surrogate character.
HIDDEN_CHARACTER_RE2 = r"[\p{Z}\p{C}]"
# http(s):// locations whose host needs no DNS to be refused (the trainer checks every resolved address
# too): internal names, loopback/private/link-local/CGNAT/multicast/reserved IPv4 literals in dotted,
# short, octal, hex or single-number notation, and IPv6 literals of the local, mapped or embedding kinds.
_V4_PRIVATE = (
    r"(10|127)(\.[0-9]+){0,3}|169\.254(\.[0-9]+){0,2}|192\.168(\.[0-9]+){0,2}|172\.(1[6-9]|2[0-9]|3[01])"
    r"(\.[0-9]+){0,2}|100\.(6[4-9]|[7-9][0-9]|1[01][0-9]|12[0-7])(\.[0-9]+){0,2}|192\.0\.0(\.[0-9]+)?|"
    r"198\.1[89](\.[0-9]+){0,2}|(22[4-9]|2[3-5][0-9])(\.[0-9]+){0,3}|0(\.[0-9]+){0,3}|[0-9]+|"
    r"([0-9a-fx]+\.){0,3}(0x[0-9a-f]*|0[0-9]+)(\.[0-9a-fx]+){0,3}"
)
_V6_PRIVATE = r"\[(::|0+:|f[c-f][0-9a-f]*:|64:ff9b:|2002:|2001:0*:)[^\]]*\]"
_INTERNAL_NAMES = (
    r"localhost|[^/?#@:]*\.localhost|localhost\.localdomain|metadata|metadata\.google\.internal|metadata\.goog|"
    r"instance-data"
)
PRIVATE_HTTP_HOST_RE2 = (
    rf"(?i)^https?://([^/?#@]*@)?({_INTERNAL_NAMES}|{_V4_PRIVATE}|{_V6_PRIVATE})\.?(:[0-9]*)?([/?#]|$)"
)


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

    name: ObjectName = Field(description="Name of the Secret, in the resource's namespace.")
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
            "FineTuneJob: the GPUs of each training pod, one worker process per GPU (distributed.nodes pods). "
            "Empty: from the plan."
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
    ephemeral_storage: Quantity | None = Field(
        default=None,
        description=(
            "Local disk of each model pod (BigModel: each Ray worker) or of the training pod: its "
            "ephemeral-storage request and limit, and the size limit of every scratch volume it mounts "
            "(model cache, /tmp). Default: from the plan (downloaded weights + 5 % + 4 GiB of cache, + 10 GiB "
            "for /tmp and logs; the trainer adds staged checkpoints and datasets), or the operator's "
            "default_ephemeral_storage when the weights are unknown."
        ),
    )


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


def rules(*rule_message_path: str) -> dict[str, Any]:
    """CEL rules with the field path the apiserver names: rules(rule, message, fieldPath, ...)."""
    triples = zip(rule_message_path[::3], rule_message_path[1::3], rule_message_path[2::3], strict=True)
    return {"x-kubernetes-validations": [{"rule": r, "message": m, "fieldPath": p} for r, m, p in triples]}


# --- a model's config.json inline: free-form, but bounded in shape at admission ----------------------

MAX_INLINE_CONFIG_KEYS = 512
"""Top-level keys of an inline config.json (real ones have 30-80)."""
MAX_INLINE_CONFIG_DEPTH = 6
"""Keys or indices on the path to any value (config.a.b.c.d.e.f); real configs nest 2-5 levels
(quantization_config.config_groups.group_0.weights.num_bits is 5)."""
MAX_INLINE_CONFIG_STRING = 4096
"""Characters of any string value (real ones are names and dtypes, under 200)."""
MAX_INLINE_CONFIG_MAP = 256
"""Keys of a nested object (vision_config and text_config have 30-80)."""
MAX_INLINE_CONFIG_LIST = 4096
"""Items of a list (layer_types and ignore lists have one entry per layer)."""
INLINE_CONFIG_LIMITS = (
    f"at most {MAX_INLINE_CONFIG_KEYS} top-level keys, {MAX_INLINE_CONFIG_DEPTH} levels of nesting, "
    f"{MAX_INLINE_CONFIG_MAP} keys per nested object, {MAX_INLINE_CONFIG_LIST} items per list and "
    f"{MAX_INLINE_CONFIG_STRING} characters per string (refused at admission), and 256 KiB in all "
    "(refused by the operator with reason ModelConfigOutOfBounds)"
)


def _config_value_schema(levels_left: int) -> dict[str, Any]:
    """The schema of a value `levels_left` levels above the deepest allowed: untyped (any JSON), with
    every string, object and list bounded; at the last level only scalars (and empty containers)."""
    node: dict[str, Any] = {
        "x-kubernetes-preserve-unknown-fields": True,
        "nullable": True,
        "maxLength": MAX_INLINE_CONFIG_STRING,
        "maxProperties": MAX_INLINE_CONFIG_MAP if levels_left else 0,
        "maxItems": MAX_INLINE_CONFIG_LIST if levels_left else 0,
    }
    if levels_left:
        child = _config_value_schema(levels_left - 1)
        node["additionalProperties"] = child
        node["items"] = child
    return node


def config_shape_problem(config: dict[str, Any]) -> str | None:
    """The admission bounds of an inline config.json, checked again by the operator (iteratively)."""
    if len(config) > MAX_INLINE_CONFIG_KEYS:
        return f"has {len(config)} top-level keys; at most {MAX_INLINE_CONFIG_KEYS}"
    stack: list[tuple[str, Any, int]] = [(f"[{key!r}]", value, 1) for key, value in config.items()]
    while stack:
        where, value, depth = stack.pop()
        if isinstance(value, str) and len(value) > MAX_INLINE_CONFIG_STRING:
            return f"{where} is {len(value)} characters long; at most {MAX_INLINE_CONFIG_STRING}"
        if isinstance(value, dict | list):
            limit = MAX_INLINE_CONFIG_MAP if isinstance(value, dict) else MAX_INLINE_CONFIG_LIST
            if value and depth >= MAX_INLINE_CONFIG_DEPTH:
                return f"{where} nests deeper than {MAX_INLINE_CONFIG_DEPTH} levels"
            if len(value) > limit:
                return f"{where} has {len(value)} entries; at most {limit}"
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((f"{where}[{key!r}]", child, depth + 1) for key, child in items)
    return None


def _check_config_shape(config: dict[str, Any] | None) -> dict[str, Any] | None:
    if config is not None:
        problem = config_shape_problem(config)
        if problem:
            raise ValueError(f"the inline config.json {problem}")
    return config


InlineModelConfig = Annotated[
    dict[str, Any],
    AfterValidator(_check_config_shape),
    WithJsonSchema(
        {
            "type": "object",
            "maxProperties": MAX_INLINE_CONFIG_KEYS,
            "additionalProperties": _config_value_schema(MAX_INLINE_CONFIG_DEPTH - 1),
        }
    ),
]
"""A model's config.json inline (spec.model.config, spec.baseModel.config), bounded in shape."""


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


def has_parent_segment(value: str) -> bool:
    """Whether `value` has a `..` segment once decoded (the operator's own check, after the CEL rule)."""
    return path_problem(value) is not None


def _check_location(value: str | None) -> str | None:
    """A URI or path: no hidden characters, no `..` segment in any decoded form (bigmodel_contract)."""
    if value is not None:
        problem = uri_text_problem(value) or path_problem(value)
        if problem:
            raise ValueError(problem)
    return value


def _check_fetched_location(value: str | None) -> str | None:
    """As `_check_location`, and an http(s):// host must not be an internal name or address literal."""
    value = _check_location(value)
    if value is not None and value.lower().startswith(("http://", "https://")):
        problem = literal_host_problem(urlsplit(value).hostname)
        if problem:
            raise ValueError(f"{problem}: http(s) sources must be public (the trainer refuses internal addresses)")
    return value


SafeLocation = AfterValidator(_check_location)
"""Pydantic half of `location_rules`: the same rules when the operator parses a spec."""
SafeFetchedLocation = AfterValidator(_check_fetched_location)
"""Pydantic half of `location_rules(..., fetched=True)`."""


def location_rules(what: str = "a path", *, fetched: bool = False) -> dict[str, Any]:
    """CEL rules on a URI or path string: no `..` segment (also encoded), no whitespace or control
    characters, and with `fetched` no http(s):// host that is an internal name or address literal."""
    rules = [
        {
            "rule": f"!self.matches('{re2_literal(PARENT_SEGMENT_RE2)}')",
            "message": f"{what} must not contain '..' path segments (it would leave its volume)",
        },
        {
            "rule": f"!self.matches('{re2_literal(HIDDEN_CHARACTER_RE2)}')",
            "message": f"{what} must not contain whitespace or control characters (spaces, non-breaking or "
            "zero-width spaces, bidi overrides, newlines)",
        },
    ]
    if fetched:
        rules.append(
            {
                "rule": f"!self.matches('{re2_literal(PRIVATE_HTTP_HOST_RE2)}')",
                "message": f"{what}: http(s) sources must not point at loopback, link-local (cloud metadata), "
                "private or other internal addresses",
            }
        )
    return {"x-kubernetes-validations": rules}


NodeSelector = Annotated[
    dict[str, Annotated[str, Field(max_length=63, pattern=LABEL_VALUE)]],
    Field(
        max_length=32,
        description="Extra node labels the pods must match.",
        json_schema_extra=map_keys_match(QUALIFIED_NAME, "a label key (optional DNS prefix/, then name)"),
    ),
]
