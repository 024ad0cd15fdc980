"""Generate the CustomResourceDefinitions from the pydantic API (`bigmodel crds`, `make crds`).

Pydantic emits JSON Schema (draft 2020-12); Kubernetes wants a *structural* OpenAPI v3.0 schema.
The conversion inlines `$ref`s, folds `Optional[X]` (anyOf X|null) into X, turns numeric
`exclusiveMinimum` into the boolean form, drops `title`/`default`/`additionalProperties: false`, and
bounds every string, list and map so the apiserver can cost CEL rules (see docs/development.md).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from bigmodel_operator import yaml_for_go
from bigmodel_operator.api import GROUP, VERSION, BigModelSpec, BigModelStatus, FineTuneJobSpec, FineTuneJobStatus
from bigmodel_operator.api.base import DNS_1035_LABEL

# Bounds applied where a field sets none, so CEL cost estimation stays finite.
DEFAULT_MAX_STRING = 4096
DEFAULT_MAX_ITEMS = 256
DEFAULT_MAX_PROPERTIES = 256

_DROP_KEYS = {"title", "default", "examples"}
CATEGORY = "bigmodel-all"
"""`kubectl get bigmodel-all` lists BigModels and FineTuneJobs together."""


@dataclass(frozen=True)
class CrdInfo:
    """Names and presentation of one custom resource kind."""

    kind: str
    plural: str
    singular: str
    short_names: list[str]
    description: str
    spec_model: type[BaseModel]
    status_model: type[BaseModel]
    printer_columns: list[dict[str, Any]]
    root_rules: list[dict[str, str]] = field(default_factory=list)
    spec_rules: list[dict[str, str]] = field(default_factory=list)
    scale: dict[str, str] | None = None
    # Not "bigmodel": kubectl expands a category before it looks up a resource, so a category named
    # like the singular made `kubectl get bigmodel NAME` list both kinds and refuse the NAME.
    categories: list[str] = field(default_factory=lambda: [CATEGORY])

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, list):
        return [_resolve(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        siblings = {k: v for k, v in node.items() if k != "$ref"}
        merged = {**target, **siblings}
        if "description" in siblings:
            merged["description"] = siblings["description"]
        return _resolve(merged, defs)
    return {k: _resolve(v, defs) for k, v in node.items() if k != "$defs"}


def _fold_nullable(node: dict[str, Any]) -> dict[str, Any]:
    variants = node.get("anyOf")
    if not variants or node.get("x-kubernetes-int-or-string"):
        return node
    non_null = [v for v in variants if v.get("type") != "null"]
    if len(non_null) == 1 and len(non_null) < len(variants):
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        inner = dict(non_null[0])
        # An inner int-or-string keeps its anyOf; siblings (description, extensions) win.
        return {**inner, **rest}
    return node


def _structural(node: Any) -> Any:
    if isinstance(node, list):
        return [_structural(n) for n in node]
    if not isinstance(node, dict):
        return node
    node = _fold_nullable(node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "additionalProperties" and isinstance(value, bool):
            if value:
                out["x-kubernetes-preserve-unknown-fields"] = True
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        if key == "properties":
            out[key] = {name: _structural(sub) for name, sub in value.items()}
        elif key == "anyOf":
            out[key] = value  # only int-or-string uses anyOf, and it must stay exactly [{integer}, {string}]
        elif key in {"items", "additionalProperties"}:
            out[key] = _structural(value)
        else:
            out[key] = value
    for bound in ("exclusiveMinimum", "exclusiveMaximum"):
        if bound in out and not isinstance(out[bound], bool):
            out["minimum" if bound == "exclusiveMinimum" else "maximum"] = out[bound]
            out[bound] = True
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True  # a maxProperties set by the field stays
    _bound(out)
    return out


def _bound(schema: dict[str, Any]) -> None:
    kind = schema.get("type")
    if kind == "string" and "maxLength" not in schema and "enum" not in schema and "format" not in schema:
        schema["maxLength"] = DEFAULT_MAX_STRING
    elif kind == "array" and "maxItems" not in schema:
        schema["maxItems"] = DEFAULT_MAX_ITEMS
    elif kind == "object" and "additionalProperties" in schema and "maxProperties" not in schema:
        schema["maxProperties"] = DEFAULT_MAX_PROPERTIES


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural OpenAPI v3 schema of a pydantic model, as a CRD's openAPIV3Schema wants it."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    resolved = _resolve(raw, raw.get("$defs", {}))
    return _structural(resolved)


def _with_rules(schema: dict[str, Any], rules: list[dict[str, str]]) -> dict[str, Any]:
    if rules:
        schema = {**schema, "x-kubernetes-validations": [*schema.get("x-kubernetes-validations", []), *rules]}
    return schema


def crd(info: CrdInfo) -> dict[str, Any]:
    """The CustomResourceDefinition of one kind."""
    spec_schema = _with_rules(openapi_schema(info.spec_model), info.spec_rules)
    status_schema = openapi_schema(info.status_model)
    root: dict[str, Any] = {
        "type": "object",
        "description": info.description,
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string", "description": "APIVersion of this object: bigmodel.io/v1alpha1."},
            "kind": {"type": "string", "description": f"Kind of this object: {info.kind}."},
            "metadata": {"type": "object"},
            "spec": spec_schema,
            "status": status_schema,
        },
    }
    root = _with_rules(root, info.root_rules)
    subresources: dict[str, Any] = {"status": {}}
    if info.scale:
        subresources["scale"] = info.scale
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": info.name, "labels": {"app.kubernetes.io/part-of": "bigmodel-operator"}},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": info.short_names,
                "categories": info.categories,
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": root},
                    "subresources": subresources,
                    "additionalPrinterColumns": info.printer_columns,
                }
            ],
        },
    }


def _col(name: str, path: str, kind: str = "string", priority: int = 0, desc: str = "") -> dict[str, Any]:
    column: dict[str, Any] = {"name": name, "type": kind, "jsonPath": path}
    if priority:
        column["priority"] = priority
    if desc:
        column["description"] = desc
    return column


_AGE = _col("Age", ".metadata.creationTimestamp", "date")

BIGMODEL = CrdInfo(
    kind="BigModel",
    plural="bigmodels",
    singular="bigmodel",
    short_names=["bm"],
    description="BigModel serves a large language model with vLLM on Ray Serve (KubeRay) behind an OpenAI API.",
    spec_model=BigModelSpec,
    status_model=BigModelStatus,
    printer_columns=[
        _col("Model", ".spec.model.uri", desc="Model location"),
        _col("GPUs", ".status.plan.gpusPerReplica", "integer", desc="GPUs per replica"),
        _col("Replicas", ".status.replicas", "integer"),
        _col("Ready", '.status.conditions[?(@.type=="Ready")].status'),
        _col("URL", ".status.url"),
        _col("Reason", '.status.conditions[?(@.type=="Ready")].reason', priority=1),
        _col("Available", ".status.readyReplicas", "integer", priority=1, desc="Engine replicas serving"),
        _col("Startup", ".status.startup.phase", priority=1, desc="Phase of the cold start in progress"),
        _AGE,
    ],
    root_rules=[
        {
            "rule": "self.metadata.name.size() <= 40",
            "message": (
                "metadata.name must be at most 40 characters: the RayService and its pods derive their names from it"
            ),
        },
        {
            "rule": f"self.metadata.name.matches('{DNS_1035_LABEL}')",
            "message": (
                "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a "
                "letter, no dots), because KubeRay requires one for the RayService it names after it: "
                "e.g. llama-3-1-8b instead of llama-3.1-8b"
            ),
        },
    ],
    scale={
        "specReplicasPath": ".spec.scaling.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    },
)

FINETUNEJOB = CrdInfo(
    kind="FineTuneJob",
    plural="finetunejobs",
    singular="finetunejob",
    short_names=["ftj"],
    description="FineTuneJob adapts a model to your data (LoRA, QLoRA or full) in a batch/v1 Job.",
    spec_model=FineTuneJobSpec,
    status_model=FineTuneJobStatus,
    printer_columns=[
        _col("Base", ".status.baseModelUri", desc="Base model (resolved)"),
        _col("Method", ".spec.method.type"),
        _col("Phase", ".status.phase"),
        _col("Progress", ".status.progress.percent", "integer", desc="Percent of steps done"),
        _col("Loss", ".status.progress.loss", "number", priority=1),
        _col("ETA", ".status.progress.etaSeconds", "integer", priority=1, desc="Seconds left"),
        _AGE,
    ],
    root_rules=[
        {
            "rule": "self.metadata.name.size() <= 50",
            "message": "metadata.name must be at most 50 characters: the Job and its pods derive their names from it",
        }
    ],
    spec_rules=[{"rule": "self == oldSelf", "message": "spec is immutable: create a new FineTuneJob to change it"}],
)

ALL_CRDS = (BIGMODEL, FINETUNEJOB)


def render(info: CrdInfo) -> str:
    """The CRD as YAML text, with a header saying it is generated."""
    header = "# GENERATED by `bigmodel crds` from operator/bigmodel_operator/api — do not edit.\n"
    return header + yaml_for_go.dump(crd(info), sort_keys=False, width=120)


def write_all(out_dir: Path) -> list[Path]:
    """Write every CRD into out_dir as <plural>.<group>.yaml and return the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for info in ALL_CRDS:
        path = out_dir / f"{info.name}.yaml"
        path.write_text(render(info))
        paths.append(path)
    return paths


def check(directory: Path) -> list[str]:
    """Lines describing how the CRDs in `directory` differ from the API (empty when they match)."""
    problems = []
    for info in ALL_CRDS:
        path = directory / f"{info.name}.yaml"
        if not path.exists():
            problems.append(f"missing: {path}")
        elif path.read_text() != render(info):
            problems.append(f"differs from the API: {path}")
    return problems
