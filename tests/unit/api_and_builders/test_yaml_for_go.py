"""What we write as YAML for Go readers (kubectl, Helm, KubeRay) reads back the same under YAML 1.1.

go-yaml v2 (sigs.k8s.io/yaml) reads unquoted y/Y/n/N as booleans; PyYAML does not, so a plain
`yaml.safe_load` round trip cannot catch it. `GoLoader` adds those words as go-yaml has them.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from bigmodel_operator import crdgen, yaml_for_go
from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.config import OperatorConfig

from .conftest import ROOT, load_example


class GoLoader(yaml.SafeLoader):
    """PyYAML's safe loader plus the YAML 1.1 booleans only go-yaml knows."""


_TRUE = {"y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"}


def _construct_bool(loader: yaml.SafeLoader, node: yaml.ScalarNode) -> bool:
    return loader.construct_scalar(node) in _TRUE


GoLoader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:y|Y|n|N)$"), list("yYnN"))
GoLoader.add_constructor("tag:yaml.org,2002:bool", _construct_bool)


def _go_load(text: str) -> Any:
    return yaml.load(text, Loader=GoLoader)


def test_go_loader_reads_n_as_false() -> None:
    """The loader really models the reader that pruned status.evaluation.comparisons[].n."""
    assert _go_load("n: 1\ny: N\n") == {False: 1, True: False}
    assert yaml.safe_load("n: 1\n") == {"n": 1}


@pytest.mark.parametrize("word", ["y", "Y", "n", "N", "yes", "no", "on", "off", "true", "False"])
def test_bool_words_are_quoted(word: str) -> None:
    data = {word: [word, {"nested": word}]}
    for fast in (False, True):
        assert _go_load(yaml_for_go.dump(data, sort_keys=False, fast=fast)) == data


@pytest.mark.parametrize("info", crdgen.ALL_CRDS, ids=lambda i: i.kind)
def test_crds_read_back_by_go_as_generated(info: crdgen.CrdInfo) -> None:
    """Every committed CRD (crds/ and the chart's copy) means to kubectl and Helm what the API says."""
    for directory in (ROOT / "crds", ROOT / "charts" / "bigmodel-operator" / "files" / "crds"):
        assert _go_load((directory / f"{info.name}.yaml").read_text()) == crdgen.crd(info), directory


def test_serve_config_reads_back_by_go_as_rendered() -> None:
    """serveConfigV2 with user strings that are YAML 1.1 booleans to go-yaml (an adapter named `y`)."""
    body = load_example("bigmodel-tiny-cpu.yaml")
    body["spec"]["adapters"] = [{"name": "y", "uri": "s3://bucket/n"}, {"name": "n", "uri": "s3://bucket/y"}]
    spec = BigModelSpec.model_validate(body["spec"])
    rendered = build_rayservice(body, spec, placement(spec, None), OperatorConfig())["spec"]["serveConfigV2"]
    assert _go_load(rendered) == yaml.safe_load(rendered)
    assert "'y'" in rendered and "'n'" in rendered


_TRICKY = [
    "y",
    "N",
    "yes",
    "off",
    "true",
    "null",
    "~",
    "",
    " ",
    "1",
    "1.0",
    "1e3",
    "0x1F",
    "0o17",
    "1_000",
    "1:30",
    ".inf",
    ".nan",
    "2024-01-01",
    "-",
    "-a",
    "a:",
    "a:b",
    "a: b",
    "a #b",
    "#a",
    "@a",
    "!a",
    "&a",
    "*a",
    "%a",
    "`a",
    "'a",
    '"a',
    "[a",
    "{a",
    "a,b",
    "?a",
    "|a",
    ">a",
    "a b",
    "a\nb",
    "é",
    "a\tb",
    "x" * 200,
    "file:///opt/m",
    "hf://org/m",
    "s3://b/k",
    "/abs/path",
    "a.b:c",
    "Ünïcode",
    "a\u2028b",
]


def _serve_configs() -> list[Any]:
    configs = []
    for path in sorted((ROOT / "docs" / "examples").glob("bigmodel*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "BigModel":
                doc["metadata"] = {**doc.get("metadata", {}), "namespace": "n", "uid": "u"}
                spec = BigModelSpec.model_validate(doc["spec"])
                rayservice = build_rayservice(doc, spec, placement(spec, None), OperatorConfig())
                configs.append(yaml.safe_load(rayservice["spec"]["serveConfigV2"]))
    return configs


def test_fast_dump_writes_what_pyyaml_writes() -> None:
    """dump_fast (serveConfigV2 on every new BigModel's path) writes PyYAML's text to the byte: a different text
    would change every RayService's spec hash and make the operator rewrite them all after an upgrade."""
    configs = _serve_configs()
    assert configs
    documents: list[Any] = [
        *configs,
        {"a": {"b": [1, 2.5, 1e-05, 600.0, True, None, {}, []], "c": {}, "d": []}, "e": [{"f": 1, "g": [{"h": "i"}]}]},
        {"list": [[1, 2]], "float": 3.0e20, "neg": -1, "negf": -0.5},
    ]
    for text in _TRICKY:
        documents += [{"k": text}, {"k": [text]}, {"k": [{"m": text}]}, {"x" if text == "" else text: 1}]
    for float_value in (float("inf"), float("nan"), 1e16, 0.1 + 0.2):
        documents.append({"f": float_value})
    for document in documents:
        assert yaml_for_go.dump_fast(document) == yaml_for_go.dump(document, sort_keys=True, fast=True), document
