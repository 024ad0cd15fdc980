"""Pure builders: examples in, RayService / Ingress / Job out, compared with golden YAML."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from bigmodel_operator import naming
from bigmodel_operator.api import BigModelSpec, FineTuneJobSpec
from bigmodel_operator.builders.ingress import build_ingress, ingress_url
from bigmodel_operator.builders.placement import Placement, placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.builders.trainer_job import build_config_map, build_identity, build_job, render_trainer_config
from bigmodel_operator.builders.volumes import Mounts
from bigmodel_operator.config import OperatorConfig

from .conftest import ROOT, assert_golden, load_example

CONFIG = OperatorConfig()
# What the operator reads for each example (the Hub's config.json of the Llama, the tiny one's inline config).
MODEL_CONFIGS = {"bigmodel-llama-3.1-8b.yaml": ROOT / "tests/data/model-configs/meta-llama--Llama-3.1-8B.json"}


def _rayservice(example: str, place: Placement | None = None) -> dict[str, Any]:
    body = load_example(example)
    spec = BigModelSpec.model_validate(body["spec"])
    source = MODEL_CONFIGS.get(example)
    model_config = json.loads(source.read_text()) if source else spec.model.config
    return build_rayservice(body, spec, place or placement(spec, None, model_config), CONFIG)


@pytest.mark.parametrize("example", ["bigmodel-llama-3.1-8b.yaml", "bigmodel-tiny-cpu.yaml"])
def test_rayservice_golden(example: str) -> None:
    assert_golden(example.replace(".yaml", ".rayservice.yaml"), _rayservice(example))


def test_ingress_golden() -> None:
    body = load_example("bigmodel-llama-3.1-8b.yaml")
    spec = BigModelSpec.model_validate(body["spec"])
    ingress = build_ingress(body, spec, CONFIG)
    assert_golden("bigmodel-llama-3.1-8b.ingress.yaml", ingress)
    assert ingress_url(spec) == "https://llm.example.com/v1"
    paths = [p["path"] for p in ingress["spec"]["rules"][0]["http"]["paths"]]
    assert paths == ["/v1", "/health"], "only the OpenAI paths and health are exposed"


def test_gpu_worker_group_requests_gpus_tolerates_and_selects_product() -> None:
    rs = _rayservice("bigmodel-llama-3.1-8b.yaml")
    group = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    pod = group["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == "1"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert (group["minReplicas"], group["maxReplicas"]) == (1, 4)
    serve = yaml.safe_load(rs["spec"]["serveConfigV2"])
    scaling = serve["applications"][0]["deployments"][1]["autoscaling_config"]
    assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 4), "one scaling block drives both levels"
    env = pod["containers"][0]["env"]
    token = next(e for e in env if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token"}


def test_pipeline_parallel_pods_per_replica() -> None:
    body = load_example("bigmodel-llama-3.1-8b.yaml")
    spec = BigModelSpec.model_validate(body["spec"])
    place = Placement("vllm", tensor_parallel_size=8, pipeline_parallel_size=2, max_model_len=None)
    rs = build_rayservice(body, spec, place, CONFIG)
    group = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    assert group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert (group["minReplicas"], group["maxReplicas"]) == (2, 8)


def test_cpu_example_has_no_gpu_anything() -> None:
    rs = _rayservice("bigmodel-tiny-cpu.yaml")
    pod = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "tolerations" not in pod and "nodeSelector" not in pod


def test_spec_hash_changes_with_spec_only() -> None:
    a = _rayservice("bigmodel-llama-3.1-8b.yaml")
    b = _rayservice("bigmodel-llama-3.1-8b.yaml")
    assert a == b
    body = load_example("bigmodel-llama-3.1-8b.yaml")
    body["spec"]["engine"]["maxModelLen"] = 8192
    spec = BigModelSpec.model_validate(body["spec"])
    c = build_rayservice(body, spec, placement(spec, None), CONFIG)
    key = naming.ANNOTATION_SPEC_HASH
    assert c["metadata"]["annotations"][key] != a["metadata"]["annotations"][key]


def test_pvc_model_and_adapters_are_mounted_once() -> None:
    body = load_example("bigmodel-tiny-cpu.yaml")
    body["spec"]["model"]["uri"] = "pvc://models/llama/8b"
    body["spec"]["adapters"] = [{"name": "a", "uri": "pvc://models/adapters/a"}, {"name": "b", "uri": "file:///ad/b"}]
    spec = BigModelSpec.model_validate(body["spec"])
    rs = build_rayservice(body, spec, placement(spec, None), CONFIG)
    pod = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["models"]
    args = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["model"]["local_path"] == "/mnt/bigmodel/pvc/models/llama/8b"
    adapters = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]["deployments"][1]["user_config"]
    assert adapters["adapters"][0]["local_path"] == "/mnt/bigmodel/pvc/models/adapters/a"
    assert adapters["adapters"][1]["local_path"] == "/ad/b"


def test_finetunejob_children_golden() -> None:
    body = load_example("finetunejob-lora.yaml")
    spec = FineTuneJobSpec.model_validate(body["spec"])
    mounts = Mounts(root=CONFIG.model_mount_root)
    trainer_config = render_trainer_config(body, spec, "hf://meta-llama/Llama-3.1-8B-Instruct", None, mounts)
    config_map = build_config_map(body, trainer_config)
    job = build_job(body, spec, 1, mounts, CONFIG, config_map)
    assert_golden(
        "finetunejob-lora.children.yaml", {"configMap": config_map, "job": job, "identity": build_identity(body)}
    )
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert pod["serviceAccountName"] == "support-bot-v1-trainer"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["pvc-adapters"]["persistentVolumeClaim"]["readOnly"] is False
    assert volumes["pvc-training-data"]["persistentVolumeClaim"]["readOnly"] is True


def test_finetunejob_multinode_children_golden() -> None:
    """2 pods × 8 GPUs through a Kueue queue: an Indexed Job, a headless Service, torchrun's rendezvous."""
    from bigmodel_operator.builders.trainer_job import Layout, build_rendezvous_service

    body = load_example("finetunejob-multinode-70b.yaml")
    spec = FineTuneJobSpec.model_validate(body["spec"])
    mounts = Mounts(root=OperatorConfig().model_mount_root)
    layout = Layout(gpus=8, nodes=2, strategy="fsdp")
    trainer_config = render_trainer_config(body, spec, spec.base_model.uri or "", None, mounts, layout=layout)
    config_map = build_config_map(body, trainer_config)
    job = build_job(body, spec, 8, mounts, OperatorConfig(), config_map, nodes=2)
    service = build_rendezvous_service(body)
    assert_golden("finetunejob-multinode-70b.children.yaml", {"configMap": config_map, "job": job, "service": service})


def test_trainer_role_is_limited_to_its_own_status() -> None:
    body = load_example("finetunejob-lora.yaml")
    _, role, binding = build_identity(body)
    assert role["rules"] == [
        {
            "apiGroups": ["bigmodel.io"],
            "resources": ["finetunejobs/status"],
            "resourceNames": ["support-bot-v1"],
            "verbs": ["get", "patch"],
        }
    ]
    assert binding["subjects"][0]["name"] == "support-bot-v1-trainer"
