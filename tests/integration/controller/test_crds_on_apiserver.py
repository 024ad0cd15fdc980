"""Our CRDs on a real apiserver: examples apply, bad specs are refused with the field, FTJ is immutable."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import GROUP, REPO, VERSION, load_example

EXAMPLES = sorted((REPO / "docs" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_applies(path: Path, kubectl: Callable[..., Any], namespace: str) -> None:
    result = kubectl("apply", "--server-side", "--field-manager=it", "-n", namespace, "-f", str(path))
    assert "serverside-applied" in result.stdout


def _bm(**changes: Any) -> dict[str, Any]:
    body = load_example("bigmodel-llama-3.1-8b.yaml")
    for dotted, value in changes.items():
        _set(body, dotted, value)
    return body


def _ftj(**changes: Any) -> dict[str, Any]:
    body = load_example("finetunejob-lora.yaml")
    for dotted, value in changes.items():
        _set(body, dotted, value)
    return body


_DELETE = object()


def _set(body: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split("__")
    node = body
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    if value is _DELETE:
        node.pop(keys[-1], None)
    else:
        node[keys[-1]] = value


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("bm-no-model", _bm(spec__model=_DELETE), "spec.model: Required value"),
    ("bm-uri-scheme", _bm(spec__model__uri="ftp://host/model"), "spec.model.uri"),
    ("bm-gpu-count", _bm(spec__resources__gpu__count=65), "spec.resources.gpu.count"),
    ("bm-gmu-zero", _bm(spec__engine__gpuMemoryUtilization=0), "spec.engine.gpuMemoryUtilization"),
    ("bm-gmu-big", _bm(spec__engine__gpuMemoryUtilization=1.5), "spec.engine.gpuMemoryUtilization"),
    ("bm-replicas-xor", _bm(spec__scaling__replicas=2), "set either replicas or minReplicas/maxReplicas"),
    ("bm-min-max", _bm(spec__scaling__minReplicas=5, spec__scaling__maxReplicas=2), "minReplicas must not exceed"),
    ("bm-tp-divides", _bm(spec__engine__tensorParallelSize=3, spec__resources__gpu__count=4), "multiple of"),
    ("bm-engine-enum", _bm(spec__runtime__engine="tgi"), "spec.runtime.engine"),
    (
        "bm-dup-adapter",
        _bm(spec__adapters=[{"name": "a", "uri": "s3://b/a"}, {"name": "a", "uri": "s3://b/c"}]),
        "spec.adapters[1]",
    ),
    ("bm-tls-no-host", _bm(spec__expose__ingress={"tlsSecretName": "tls"}), "tlsSecretName needs host"),
    ("bm-quantity", _bm(spec__resources__memory="lots"), "spec.resources.memory"),
    ("bm-name-long", _bm(metadata__name="m" * 41), "metadata.name must be at most 40"),
    ("bm-max-len", _bm(spec__engine__maxModelLen=4), "spec.engine.maxModelLen"),
    ("ftj-rank-zero", _ftj(spec__method__rank=0), "spec.method.rank"),
    ("ftj-rank-big", _ftj(spec__method__rank=2048), "spec.method.rank"),
    ("ftj-base-both", _ftj(spec__baseModel__uri="hf://org/m"), "set exactly one of uri or bigModelRef"),
    ("ftj-format", _ftj(spec__dataset__format="parquet"), "spec.dataset.format"),
    ("ftj-split", _ftj(spec__dataset__validationSplit=0.9), "spec.dataset.validationSplit"),
    ("ftj-qlora-cpu", _ftj(spec__method__type="qlora", spec__resources__gpu__count=0), "qlora"),
    ("ftj-output", _ftj(spec__output__uri="http://x/y"), "spec.output.uri"),
    ("ftj-full-deploy", _ftj(spec__method__type="full"), "deployTo attaches a LoRA adapter"),
    ("ftj-no-dataset", _ftj(spec__dataset=_DELETE), "spec.dataset: Required value"),
    ("ftj-lr", _ftj(spec__hyperparameters__learningRate=2), "spec.hyperparameters.learningRate"),
    # issue 10: names KubeRay refuses, '..' segments, unvalidated fields, unbounded blobs
    ("bm-name-dots", _bm(metadata__name="llama-3.1-8b"), "must be a DNS-1035 label"),
    ("bm-name-digit", _bm(metadata__name="8b-chat"), "must be a DNS-1035 label"),
    ("bm-uri-dotdot", _bm(spec__model__uri="pvc://models/../../../etc"), "must not contain '..' path segments"),
    ("bm-hf-dotdot", _bm(spec__model__uri="hf://../.."), "must not contain '..' path segments"),
    ("bm-tokenizer-path", _bm(spec__model__tokenizer="../../../etc/passwd"), "spec.model.tokenizer"),
    ("bm-tokenizer-dotdot", _bm(spec__model__tokenizer="pvc://m/../../x"), "must not contain '..' path segments"),
    ("bm-adapter-dotdot", _bm(spec__adapters=[{"name": "a", "uri": "pvc://ad/../x"}]), "path segments"),
    ("bm-revision-ctrl", _bm(spec__model__revision="main\r\nX: y"), "spec.model.revision"),
    ("bm-ann-key", _bm(spec__expose__ingress={"annotations": {"bad key": "v"}}), "every key must be a qualified"),
    ("bm-class-name", _bm(spec__expose__ingress={"className": "my_class"}), "spec.expose.ingress.className"),
    # issue 11: the ingress path is the Serve route_prefix: no '.'/'..' segment, no empty segment
    ("bm-path-dots", _bm(spec__expose__ingress={"path": "/team-a/../b"}), "must not contain '.' or '..' segments"),
    ("bm-path-trailing", _bm(spec__expose__ingress={"path": "/team-a/"}), "spec.expose.ingress.path"),
    ("bm-node-key", _bm(spec__nodeSelector={"bad key": "v"}), "every key must be a label key"),
    ("bm-node-value", _bm(spec__nodeSelector={"zone": "a b"}), "spec.nodeSelector"),
    (
        "bm-tol-exists-value",
        _bm(spec__tolerations=[{"key": "k", "operator": "Exists", "value": "v"}]),
        "operator Exists must not set value",
    ),
    ("bm-tol-seconds", _bm(spec__tolerations=[{"key": "k", "tolerationSeconds": 5}]), "only valid with effect"),
    ("bm-config-keys", _bm(spec__model__config={f"k{i}": i for i in range(600)}), "spec.model.config"),
    ("ftj-output-dotdot", _ftj(spec__output__uri="pvc://adapters/../../../tmp/x"), "path segments"),
    ("ftj-data-dotdot", _ftj(spec__dataset__uri="pvc://data/../../etc/shadow"), "path segments"),
    ("ftj-adapter-name", _ftj(spec__deployTo__adapterName="my adapter"), "spec.deployTo.adapterName"),
    # issue 21: hidden characters, encoded '..', unbounded config, CPU parallelism, SSRF targets
    ("bm-uri-nbsp", _bm(spec__model__uri="hf://org/na\u00a0me"), "spec.model.uri: Invalid value"),
    ("bm-uri-zwsp", _bm(spec__model__uri="hf://org/name\u200b"), "must not contain whitespace or control"),
    ("bm-uri-encoded", _bm(spec__model__uri="pvc://models/%2e%2e/etc"), "must not contain '..' path segments"),
    ("bm-uri-double", _bm(spec__model__uri="pvc://models/%252E%252e/etc"), "must not contain '..' path segments"),
    ("bm-uri-backslash", _bm(spec__model__uri="pvc://models/..\\etc"), "must not contain '..' path segments"),
    ("bm-adapter-nbsp", _bm(spec__adapters=[{"name": "a", "uri": "s3://b/a\u00a0"}]), "spec.adapters[0].uri"),
    ("bm-image-bidi", _bm(spec__runtime__image="repo/img:1\u202e"), "spec.runtime.image"),
    ("bm-config-1mib", _bm(spec__model__config={"x": "y" * 2**20}), "spec.model.config.x: Too long"),
    ("bm-config-nested", _bm(spec__model__config={"a": {"b": "y" * 10_000}}), "spec.model.config.a.b: Too long"),
    (
        "bm-config-deep",
        _bm(spec__model__config={"a": {"b": {"c": {"d": {"e": {"f": {"g": 1}}}}}}}),
        "spec.model.config.a.b.c.d.e.f",
    ),
    ("bm-config-both", _bm(spec__model__config={"a": 1}, spec__model__configMapRef={"name": "c"}), "spec.model"),
    ("bm-config-list", _bm(spec__model__config={"a": list(range(5000))}), "spec.model.config.a: Too many"),
    (
        "bm-cpu-tp",
        _bm(spec__resources__gpu={"count": 0}, spec__engine__tensorParallelSize=4),
        "spec.engine.tensorParallelSize: Invalid value",
    ),
    (
        "bm-cpu-pp",
        _bm(spec__resources__gpu={"count": 0}, spec__engine__pipelineParallelSize=2),
        "spec.engine.pipelineParallelSize: Invalid value",
    ),
    (
        "ftj-data-metadata",
        _ftj(spec__dataset__uri="http://169.254.169.254/latest/meta-data/iam/security-credentials/"),
        "spec.dataset.uri: Invalid value",
    ),
    ("ftj-data-decimal", _ftj(spec__dataset__uri="http://2852039166/latest/"), "http(s) sources must not point"),
    ("ftj-data-localhost", _ftj(spec__dataset__uri="https://localhost:8443/d.jsonl"), "spec.dataset.uri"),
    ("ftj-data-v6-mapped", _ftj(spec__dataset__uri="http://[::ffff:a9fe:a9fe]/x"), "spec.dataset.uri"),
    (
        "ftj-eval-private",
        _ftj(spec__evaluation={"datasetUri": "http://10.0.0.5/e.jsonl"}),
        "spec.evaluation.datasetUri",
    ),
    ("ftj-data-nbsp", _ftj(spec__dataset__uri="s3://b/k\u00a0x.jsonl"), "spec.dataset.uri"),
    (
        "ftj-config-1mib",
        _ftj(spec__baseModel={"uri": "hf://org/m", "config": {"x": "y" * 2**20}}),
        "spec.baseModel.config.x: Too long",
    ),
]


@pytest.mark.parametrize(("case", "body", "expected"), INVALID, ids=[c[0] for c in INVALID])
def test_invalid_specs_are_refused_with_the_field(
    case: str, body: dict[str, Any], expected: str, custom: Any, namespace: str
) -> None:
    from kubernetes.client.rest import ApiException

    plural = "bigmodels" if body["kind"] == "BigModel" else "finetunejobs"
    with pytest.raises(ApiException) as error:
        custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, copy.deepcopy(body))
    assert error.value.status == 422, error.value.body
    assert expected in error.value.body, f"{case}: {expected!r} not in {error.value.body}"


def test_unknown_fields_are_refused_strictly(kubectl: Callable[..., Any], namespace: str, tmp_path: Path) -> None:
    body = _bm(spec__model__uril="typo")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(body))
    result = kubectl("apply", "--server-side", "-n", namespace, "-f", str(path), check=False)
    assert result.returncode != 0 and ".spec.model.uril: field not declared in schema" in result.stderr


def test_kubectl_delete_all_leaves_bigmodels_and_finetunejobs(
    custom: Any, namespace: str, kubectl: Callable[..., Any]
) -> None:
    """Issue 21: neither kind is in the `all` category, so `kubectl delete all --all` does not touch them."""
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", _bm())
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", _ftj())
    listed = kubectl("get", "all", "-n", namespace, "-o", "name", check=False)
    assert "bigmodel" not in listed.stdout and "finetunejob" not in listed.stdout, listed.stdout
    kubectl("delete", "all", "--all", "-n", namespace, "--wait=false", check=False)
    ours = kubectl("get", "bigmodel-all", "-n", namespace, "-o", "name").stdout.split()
    assert len(ours) == 2, ours


def test_a_public_http_dataset_and_a_real_nested_config_are_admitted(custom: Any, namespace: str) -> None:
    ftj = _ftj(spec__dataset__uri="https://example.com/data/train.jsonl")
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", ftj)
    nested = {"quantization_config": {"config_groups": {"group_0": {"weights": {"num_bits": 4}}}}, "rope_scaling": None}
    bm = _bm(spec__model__config=nested)
    made = custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", bm)
    assert (
        made["spec"]["model"]["config"]["quantization_config"]["config_groups"]["group_0"]["weights"]["num_bits"] == 4
    )
    assert made["spec"]["model"]["config"]["rope_scaling"] is None  # nulls survive (nullable)


def test_finetunejob_spec_is_immutable(custom: Any, namespace: str) -> None:
    from kubernetes.client.rest import ApiException

    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "finetunejobs", _ftj())
    with pytest.raises(ApiException) as error:
        custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, "finetunejobs", "support-bot-v1", {"spec": {"method": {"rank": 32}}}
        )
    assert error.value.status == 422 and "spec is immutable" in error.value.body
    # Labels and annotations stay editable.
    custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, "finetunejobs", "support-bot-v1", {"metadata": {"labels": {"team": "a"}}}
    )
