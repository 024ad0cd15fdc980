"""s3:// FineTuneJob outputs: admitted by the API, rendered without a mount, credentials from the Secret."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from pydantic import ValidationError

from bigmodel_operator.api import FineTuneJobSpec
from bigmodel_operator.builders.trainer_job import S3_CACHE_DIR, build_config_map, build_job, render_trainer_config
from bigmodel_operator.builders.volumes import Mounts
from bigmodel_operator.config import OperatorConfig
from bigmodel_training.config import TrainerConfig

from .conftest import EXAMPLES, load_example

EXAMPLE = sorted(p.name for p in EXAMPLES.glob("finetunejob-*.yaml"))[0]


def _body(output: str, secret: str | None = "s3-creds") -> dict[str, Any]:
    body = copy.deepcopy(load_example(EXAMPLE))
    body["spec"]["output"] = {"uri": output}
    if secret:
        body["spec"].setdefault("credentials", {})["storageSecretName"] = secret
    return body


@pytest.mark.parametrize("uri", ["s3://adapters/support-bot/v1", "s3://my.bucket-1", "s3://abc/a/b/c/"])
def test_s3_output_is_admitted(uri: str) -> None:
    assert FineTuneJobSpec.model_validate(_body(uri)["spec"]).output.uri == uri


@pytest.mark.parametrize(
    "uri", ["s3://", "s3://Upper/x", "s3://ab", "s3://-bad/x", "s3://b/../escape", "gs://bucket/x", "s3:/x"]
)
def test_bad_s3_output_is_refused(uri: str) -> None:
    with pytest.raises(ValidationError):
        FineTuneJobSpec.model_validate(_body(uri)["spec"])


def test_s3_output_renders_without_a_mount_and_with_the_secret() -> None:
    body = _body("s3://adapters/support-bot/v1")
    spec = FineTuneJobSpec.model_validate(body["spec"])
    mounts = Mounts(root="/mnt/bigmodel")
    rendered = render_trainer_config(body, spec, "hf://org/base", None, mounts)
    config = TrainerConfig.model_validate(rendered)
    assert config.output.uri == "s3://adapters/support-bot/v1"
    assert config.output.local_path is None  # the trainer stages it and uploads
    config_map = build_config_map(body, rendered)
    job = build_job(body, spec, 0, mounts, OperatorConfig(), config_map)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert {"name": "BIGMODEL_S3_CACHE", "value": S3_CACHE_DIR} in container["env"]
    assert any(S3_CACHE_DIR.startswith(m["mountPath"] + "/") for m in container["volumeMounts"])  # writable


def test_no_s3_no_cache_variable() -> None:
    body = _body("pvc://adapters/v1", secret=None)
    spec = FineTuneJobSpec.model_validate(body["spec"])
    mounts = Mounts(root="/mnt/bigmodel")
    rendered = render_trainer_config(body, spec, "hf://org/base", None, mounts)
    job = build_job(body, spec, 0, mounts, OperatorConfig(), build_config_map(body, rendered))
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert all(e["name"] != "BIGMODEL_S3_CACHE" for e in container["env"])


def test_bigmodel_storage_secret_becomes_the_ray_pods_environment() -> None:
    from bigmodel_operator.api import BigModelSpec
    from bigmodel_operator.builders.placement import placement
    from bigmodel_operator.builders.rayservice import build_rayservice

    body = copy.deepcopy(load_example("bigmodel-tiny-cpu.yaml"))
    body["spec"]["adapters"] = [{"name": "support", "uri": "s3://adapters/support/v1", "rank": 8}]
    body["spec"]["credentials"] = {"storageSecretName": "s3-creds"}
    spec = BigModelSpec.model_validate(body["spec"])
    rs = build_rayservice(body, spec, placement(spec, None), OperatorConfig())
    cluster = rs["spec"]["rayClusterConfig"]
    pods = [cluster["headGroupSpec"]["template"], *(g["template"] for g in cluster["workerGroupSpecs"])]
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert "s3-creds" not in str(rs["spec"]["serveConfigV2"])  # a reference, never the values


def test_no_storage_secret_no_env_from() -> None:
    from bigmodel_operator.api import BigModelSpec
    from bigmodel_operator.builders.placement import placement
    from bigmodel_operator.builders.rayservice import build_rayservice

    body = load_example("bigmodel-tiny-cpu.yaml")
    spec = BigModelSpec.model_validate(body["spec"])
    rs = build_rayservice(body, spec, placement(spec, None), OperatorConfig())
    head = rs["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert "envFrom" not in head
