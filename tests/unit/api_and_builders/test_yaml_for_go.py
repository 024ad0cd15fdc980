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
