"""The contract end to end: what the operator renders into serveConfigV2 parses and builds with real Ray/vLLM.

Every example's application entry parses as `ServeApplication` and `build_app` builds its deployment
graph (engine arguments checked against the installed vLLM) without starting an engine. The CPU
example also runs for real: it is what the session fixture deploys (see conftest.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.config import OperatorConfig
from bigmodel_serving.app import build_app
from bigmodel_serving.args import APP_IMPORT_PATH, parse_application

EXAMPLES = Path(__file__).resolve().parents[3] / "docs" / "examples"


def _rendered_app(example: str) -> dict[str, Any]:
    body = yaml.safe_load((EXAMPLES / example).read_text())
    body["metadata"].update(namespace="team-a", uid="00000000-0000-0000-0000-000000000001")
    spec = BigModelSpec.model_validate(body["spec"])
    rayservice = build_rayservice(body, spec, placement(spec, None), OperatorConfig())
    (app,) = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    return dict(app)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("bigmodel-*.yaml")))
def test_every_rendered_app_parses_and_builds(example: str, serving: Any) -> None:
    # `serving`: building asks Ray for the runtime env, which would otherwise start a Ray of its own.
    app = _rendered_app(example)
    assert app["import_path"] == APP_IMPORT_PATH
    parsed = parse_application(app)
    assert build_app(parsed.args) is not None  # vLLM is never started: building is lazy


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"swap_space": 4}, r"extra\.swap_space: not an engine argument of the installed vLLM"),
        ({"structured_outputs_config": {"disable_any_whitespace": True}}, "structured_outputs_config"),
    ],
)
def test_engine_arguments_vllm_refuses_are_refused_at_build(extra: dict[str, Any], message: str) -> None:
    from bigmodel_serving.args import InvalidServeArgsError

    args = {"model": {"uri": "file:///m", "served_name": "m"}, "engine_args": {"extra": extra}}
    with pytest.raises(InvalidServeArgsError, match=message):
        build_app(args)
