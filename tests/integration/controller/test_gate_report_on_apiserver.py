"""The gate's report reaches status.evaluation whole, through the CRDs as kubectl applied them.

The loop test once read status.evaluation.comparisons back without `n`: the generated CRD had an
unquoted key `n:`, which kubectl and Helm (go-yaml, YAML 1.1) read as the boolean false, so the schema's
property was `"false"` and the apiserver pruned every `n` the trainer wrote (yaml_for_go.py).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from bigmodel_operator import crdgen
from bigmodel_training.config import GateConfig
from bigmodel_training.evaluate import GateResult, decide
from bigmodel_training.gate_comparison import compare_losses, compare_scores
from bigmodel_training.progress import KubeConnection, KubeSink, ProgressReporter

from .conftest import GROUP, VERSION
from .test_finetunejob import _ftj, _get


def _property_paths(schema: Any, path: str = "") -> set[str]:
    """Every property's path in an OpenAPI schema (items as [])."""
    out: set[str] = set()
    if not isinstance(schema, dict):
        return out
    for name, child in (schema.get("properties") or {}).items():
        out.add(f"{path}.{name}")
        out |= _property_paths(child, f"{path}.{name}")
    if isinstance(schema.get("items"), dict):
        out |= _property_paths(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        out |= _property_paths(schema["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("info", crdgen.ALL_CRDS, ids=lambda info: info.name)
def test_installed_schema_has_every_generated_property(kubectl: Callable[..., Any], info: Any) -> None:
    """The CRD the cluster holds (applied from crds/ by kubectl) names the same properties as the API."""
    stored = json.loads(kubectl("get", "crd", info.name, "-o", "json").stdout)
    generated = crdgen.crd(info)
    for version, ours in zip(stored["spec"]["versions"], generated["spec"]["versions"], strict=True):
        mine = _property_paths(ours["schema"]["openAPIV3Schema"])
        theirs = _property_paths(version["schema"]["openAPIV3Schema"])
        assert mine == theirs, f"{info.name} {version['name']}: missing {mine - theirs}, instead {theirs - mine}"


def test_trainer_gate_report_is_stored_whole(custom: Any, namespace: str, kubeconfig: Path) -> None:
    """The trainer's own report (GateResult.to_status via ProgressReporter and KubeSink) reads back equal."""
    body = _ftj("gated")
    body["spec"]["resources"]["gpu"]["product"] = "NVIDIA-H200"  # no operator here: nothing runs it anyway
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", body)
    result = GateResult(base_loss=6.5, adapted_loss=5.9, held_out_examples=5, incumbent="support-bot.ftj-v2")
    candidate = [(12.0, 4), (10.5, 3), (9.0, 3), (14.0, 4), (11.0, 3)]
    incumbent = [(11.0, 4), (9.5, 3), (8.0, 3), (13.0, 4), (10.5, 3)]
    result.comparisons.append(compare_losses(candidate, incumbent, max_ratio=1.0))
    result.comparisons.append(compare_scores([True, False, True, True], [True, True, True, True]))
    decide(result, GateConfig(max_loss_ratio=1.0))
    sent = result.to_status()
    assert sent["passed"] is False and [c["n"] for c in sent["comparisons"]] == [5, 4]

    connection = KubeConnection.from_kubeconfig(kubeconfig)
    reporter = ProgressReporter(KubeSink(namespace, "gated", connection), interval_s=0)
    assert reporter.report_evaluation(copy.deepcopy(sent))

    stored = _get(custom, namespace, "gated")["status"]["evaluation"]
    assert stored == sent
    assert [c["n"] for c in stored["comparisons"]] == [5, 4]
