"""The data contract: everything the operator renders parses as the workloads' own typed config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bigmodel_operator.api import BigModelSpec, FineTuneJobSpec
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.builders.training import render_trainer_config
from bigmodel_operator.builders.volumes import Mounts
from bigmodel_operator.config import OperatorConfig
from bigmodel_serving.args import parse_application
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
