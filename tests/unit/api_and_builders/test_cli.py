"""The `bigmodel` CLI: CRD drift check, offline plans, and the args `bigmodel serve` renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bigmodel_operator.cli import main
from bigmodel_operator.local import local_application

from .conftest import EXAMPLES, ROOT, load_example

LLAMA_8B = ROOT / "tests" / "data" / "model-configs" / "meta-llama--Llama-3.1-8B.json"


def test_crds_check_passes_on_the_committed_files(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds", "--check", str(ROOT / "crds"), "--docs", str(ROOT / "docs" / "api.md")]) == 0
    assert "match the API" in capsys.readouterr().out


def test_crds_check_fails_on_drift(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["crds", "--output", str(tmp_path)]) == 0
    (tmp_path / "bigmodels.bigmodel.io.yaml").write_text("# edited by hand\n")
    assert main(["crds", "--check", str(tmp_path)]) == 1
    assert "make crds" in capsys.readouterr().err


def test_plan_prints_the_plan_offline(capsys: pytest.CaptureFixture[str]) -> None:
    example = str(EXAMPLES / "bigmodel-llama-3.1-8b.yaml")
    assert main(["plan", example, "--model-config", str(LLAMA_8B), "-o", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["reason"] == "Planned"
    assert out["plan"]["parametersHuman"] == "8.03B"
    assert out["gpusPerReplica"] == 1


def test_plan_exits_1_when_the_model_does_not_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    manifest = (EXAMPLES / "bigmodel-llama-3.1-8b.yaml").read_text().replace("NVIDIA-H100-80GB-HBM3", "Tesla-T4")
    (tmp_path / "m.yaml").write_text(manifest.replace("maxModelLen: 16384", "maxModelLen: 131072"))
    assert main(["plan", str(tmp_path / "m.yaml"), "--model-config", str(LLAMA_8B)]) == 1
    assert "ModelTooLargeForGPU" in capsys.readouterr().out


def test_serve_renders_the_operators_args_for_one_local_replica() -> None:
    app = local_application(load_example("bigmodel-tiny-cpu.yaml"), "/tmp/keys")
    args = app["args"]
    assert args["resources"] == {"accelerator": "cpu", "num_cpus": 1}
    assert args["model"]["local_path"] == "/opt/bigmodel/tiny-llama"
    for deployment in app["deployments"]:
        scaling = deployment["autoscaling_config"]
        assert scaling["min_replicas"] == scaling["max_replicas"] == 1
    assert app["deployments"][0]["user_config"]["auth"] == {"mode": "api_keys", "keys_dir": "/tmp/keys"}
