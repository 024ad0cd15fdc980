"""The contract end to end: what the operator renders into serveConfigV2 deploys and answers.

For the CPU example the rendered application runs on the session's real Ray Serve and answers a chat
completion; the GPU examples parse and build their deployment graph without starting vLLM.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.config import OperatorConfig
from bigmodel_serving.app import build_app

EXAMPLES = Path(__file__).resolve().parents[3] / "docs" / "examples"


def _rendered_app(example: str) -> dict[str, Any]:
    body = yaml.safe_load((EXAMPLES / example).read_text())
    body["metadata"].update(namespace="team-a", uid="00000000-0000-0000-0000-000000000001")
    spec = BigModelSpec.model_validate(body["spec"])
    rayservice = build_rayservice(body, spec, placement(spec, None), OperatorConfig())
    (app,) = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"]
    assert app["import_path"] == "bigmodel_serving.app:build_app"
    return dict(app)


@pytest.mark.parametrize("example", sorted(p.name for p in EXAMPLES.glob("bigmodel-*.yaml")))
def test_every_rendered_app_builds(example: str) -> None:
    app = _rendered_app(example)
    assert build_app(app["args"]) is not None  # vLLM is never started: building is lazy


def test_cpu_example_deploys_and_answers(serving: Any, tiny_model_dir: Path) -> None:
    from ray import serve

    app = _rendered_app("bigmodel-tiny-cpu.yaml")
    args = app["args"]
    # The example names /tmp/bigmodel/tiny-llama (baked into the CPU image); here the same tiny model
    # lives in the test cache. Everything else is exactly what the operator rendered.
    args["model"]["local_path"] = str(tiny_model_dir)
    args["replica_resources"]["num_cpus"] = 0.5
    serve.run(build_app(args), name="contract", route_prefix="/contract")
    try:
        request = {"model": "tiny-llama", "max_tokens": 4, "messages": [{"role": "user", "content": "hi"}]}
        response = httpx.post(f"{serving.url}/contract/v1/chat/completions", json=request, timeout=120)
        assert response.status_code == 200, response.text
        assert response.json()["usage"]["completion_tokens"] == 4
    finally:
        serve.delete("contract")
