"""The pydantic API: examples parse, CRDs are generated and committed, schemas are structural."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bigmodel_operator import crdgen
from bigmodel_operator.api import BigModel, FineTuneJob

from .conftest import EXAMPLES, ROOT


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_parses(path: Path) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        model = {"BigModel": BigModel, "FineTuneJob": FineTuneJob}[doc["kind"]]
        parsed = model.model_validate(doc)
        assert parsed.to_wire()["spec"] == doc["spec"], "round trip must keep exactly the user's fields"


def test_committed_crds_match_the_api() -> None:
    assert crdgen.check(ROOT / "crds") == []


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for name, sub in (schema.get("properties") or {}).items():
        out += _walk(sub, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out += _walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out += _walk(schema["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("info", crdgen.ALL_CRDS, ids=lambda i: i.kind)
def test_schema_is_structural_and_bounded(info: crdgen.CrdInfo) -> None:
    root = crdgen.crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    nodes = _walk(root["properties"]["spec"], ".spec") + _walk(root["properties"]["status"], ".status")
    for path, node in nodes:
        assert "$ref" not in node and "title" not in node and "default" not in node, path
        assert node.get("additionalProperties") is not False, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), f"{path}: only int-or-string may use anyOf"
        elif "type" not in node:  # untyped (any JSON) only inside an inline config.json, and bounded
            assert node.get("x-kubernetes-preserve-unknown-fields") and ".config{}" in path, f"{path} has no type"
            assert {"maxLength", "maxItems", "maxProperties"} <= node.keys(), path
        if node.get("type") == "string" and "enum" not in node and "format" not in node:
            assert "maxLength" in node, path
        if node.get("type") == "array":
            assert "maxItems" in node, path


def test_every_spec_field_is_documented() -> None:
    for info in crdgen.ALL_CRDS:
        spec = crdgen.crd(info)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        missing = [p for p, node in _walk(spec, ".spec") if p and not node.get("description")]
        missing = [p for p in missing if not p.endswith("[]") and not p.endswith("{}")]
        assert missing == [], f"{info.kind}: fields without description: {missing}"


def test_short_names_printer_columns_and_scale() -> None:
    bm = crdgen.crd(crdgen.BIGMODEL)["spec"]
    assert bm["names"]["shortNames"] == ["bm"]
    version = bm["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]][:5] == ["Model", "GPUs", "Replicas", "Ready", "URL"]
    assert version["subresources"]["scale"]["specReplicasPath"] == ".spec.scaling.replicas"
    ftj = crdgen.crd(crdgen.FINETUNEJOB)["spec"]
    assert ftj["names"]["shortNames"] == ["ftj"]
    cols = [c["name"] for c in ftj["versions"][0]["additionalPrinterColumns"]]
    assert cols[:4] == ["Base", "Method", "Phase", "Progress"]
    spec_rules = ftj["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["x-kubernetes-validations"]
    assert {
        "rule": "self == oldSelf",
        "message": "spec is immutable: create a new FineTuneJob to change it",
    } in spec_rules


def test_wire_names_follow_the_issue() -> None:
    spec = crdgen.crd(crdgen.BIGMODEL)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = spec["properties"]
    assert {
        "model",
        "engine",
        "runtime",
        "resources",
        "scaling",
        "adapters",
        "expose",
        "auth",
        "credentials",
        "nodeSelector",
        "tolerations",
    } <= set(props)
    assert "memoryGiB" in props["resources"]["properties"]["gpu"]["properties"]
    ftj = crdgen.crd(crdgen.FINETUNEJOB)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "redactPII" in ftj["properties"]["privacy"]["properties"]
