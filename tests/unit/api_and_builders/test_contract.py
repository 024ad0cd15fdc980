"""The data contract: everything the operator renders parses as the workloads' own typed config."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from bigmodel_operator.api import BigModelSpec, FineTuneJobSpec
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.builders.trainer_job import render_trainer_config
from bigmodel_operator.builders.volumes import Mounts
from bigmodel_operator.config import OperatorConfig
from bigmodel_serving.args import parse_application
from bigmodel_serving.engine_args import llm_config_fields
from bigmodel_training.config import TrainerConfig

from .conftest import EXAMPLES, load_example

BIGMODELS = sorted(p.name for p in EXAMPLES.glob("bigmodel-*.yaml"))
FINETUNEJOBS = sorted(p.name for p in EXAMPLES.glob("finetunejob-*.yaml"))


@pytest.mark.parametrize("example", BIGMODELS)
def test_serve_config_parses_as_serve_args(example: str) -> None:
    body = load_example(example)
    spec = BigModelSpec.model_validate(body["spec"])
    rs = build_rayservice(body, spec, placement(spec, None), OperatorConfig())
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    (app,) = serve["applications"]
    assert app["import_path"] == "bigmodel_serving.app:build_app"
    parsed = parse_application(app)
    assert parsed.args.model.uri == spec.model.uri


@pytest.mark.parametrize("example", FINETUNEJOBS)
def test_trainer_config_parses(example: str) -> None:
    body = load_example(example)
    spec = FineTuneJobSpec.model_validate(body["spec"])
    rendered = render_trainer_config(body, spec, "hf://org/base", None, Mounts(root="/mnt/bigmodel"))
    config = TrainerConfig.model_validate(rendered)
    assert config.job is not None and config.job.name == body["metadata"]["name"]
    assert config.progress.sink == "kube"
    if spec.output.uri.startswith("pvc://"):
        assert config.output.local_path and Path(config.output.local_path).is_absolute()


def _ray_cpus(group: dict) -> float:
    """What KubeRay gives `ray start --num-cpus` for a group: rayStartParams, else the CPU limit rounded up."""
    if "num-cpus" in group["rayStartParams"]:
        return float(group["rayStartParams"]["num-cpus"])
    limit = str(group["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
    return float(math.ceil(int(limit[:-1]) / 1000 if limit.endswith("m") else float(limit)))


@pytest.mark.parametrize("example", BIGMODELS)
def test_engine_replica_fits_one_worker_pod(example: str) -> None:
    """The engine replica's Ray CPUs (Ray Serve LLM adds the actor's to its first placement bundle) fit a
    worker pod's advertised CPUs; a CPU worker holds exactly one replica. Found on the e2e node: a 1-CPU
    replica asked Ray for 2 and never started."""
    body = load_example(example)
    spec = BigModelSpec.model_validate(body["spec"])
    rs = build_rayservice(body, spec, placement(spec, None), OperatorConfig())
    (app,) = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"]
    fields = llm_config_fields(parse_application(app).args)
    bundles = (fields.get("placement_group_config") or {}).get("bundles") or [{}]
    replica_cpus = bundles[0].get("CPU", 0) + fields["deployment_config"]["ray_actor_options"].get("num_cpus", 1)
    (group,) = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    assert 0 < replica_cpus <= _ray_cpus(group)
    if group["groupName"] == "cpu-workers":
        assert replica_cpus == _ray_cpus(group)
