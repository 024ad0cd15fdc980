"""What the operator renders for serving, on the real control plane with the real operator process:
engine args checked against vLLM, auth on by default, light edits outside the hashed app args, one GPU count.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import GROUP, VERSION, condition, load_example, or_none

pytestmark = pytest.mark.usefixtures("operator_process")

LLAMA_8B_CONFIG = json.loads(
    (Path(__file__).resolve().parents[2] / "data" / "model-configs" / "meta-llama--Llama-3.1-8B.json").read_text()
)


def _create(custom: Any, namespace: str, body: dict[str, Any]) -> None:
    custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", body)


def _patch(custom: Any, namespace: str, name: str, patch: dict[str, Any]) -> None:
    custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", name, patch)


def _rayservice(custom: Any, namespace: str, name: str) -> Any:
    return or_none(custom.get_namespaced_custom_object, "ray.io", "v1", namespace, "rayservices", name)


def _bigmodel(custom: Any, namespace: str, name: str) -> Any:
    return or_none(custom.get_namespaced_custom_object, GROUP, VERSION, namespace, "bigmodels", name)


def _app(rayservice: dict[str, Any]) -> dict[str, Any]:
    app: dict[str, Any] = yaml.safe_load(rayservice["spec"]["serveConfigV2"])["applications"][0]
    return app


def _deployment(app: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in app["deployments"] if d["name"] == name)


def _secret(api_client: Any, namespace: str, name: str) -> Any:
    from kubernetes import client

    return or_none(client.CoreV1Api(api_client).read_namespaced_secret, name, namespace)


def _tiny(name: str = "tiny-cpu") -> dict[str, Any]:
    body = load_example("bigmodel-tiny-cpu.yaml")
    body["metadata"]["name"] = name
    return body


def test_removed_vllm_flag_is_refused_before_anything_is_deployed(
    custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    body = _tiny()
    body["spec"]["engine"]["extraArgs"] = ["--enforce-eager", "--swap-space", "4"]
    _create(custom, namespace, body)

    def refused() -> dict[str, Any] | None:
        ready = condition(_bigmodel(custom, namespace, "tiny-cpu") or {}, "Ready")
        return ready if ready.get("reason") == "InvalidEngineArgs" else None

    ready = wait_until(refused, timeout=30)
    assert ready["status"] == "False"
    assert "extraArgs[1] --swap-space is not an engine argument of vLLM 0.29.0" in ready["message"]
    assert _rayservice(custom, namespace, "tiny-cpu") is None, "nothing may start with flags vLLM refuses"

    _patch(custom, namespace, "tiny-cpu", {"spec": {"engine": {"extraArgs": ["--enforce-eager"]}}})
    rs = wait_until(lambda: _rayservice(custom, namespace, "tiny-cpu"), timeout=30)
    assert _app(rs)["args"]["engine_args"]["enforce_eager"] is True


def test_auth_is_on_by_default_with_a_generated_secret_that_is_never_overwritten(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    _create(custom, namespace, _tiny())
    rs = wait_until(lambda: _rayservice(custom, namespace, "tiny-cpu"), timeout=30)
    secret = wait_until(lambda: _secret(api_client, namespace, "tiny-cpu-api-keys"), timeout=10)
    key = base64.b64decode(secret.data["default"]).decode()
    assert key.startswith("bm-") and len(key) > 40
    owner = secret.metadata.owner_references[0]
    assert (owner.kind, owner.name, owner.controller) == ("BigModel", "tiny-cpu", True)
    pod = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert {"name": "api-keys", "secret": {"secretName": "tiny-cpu-api-keys", "defaultMode": 0o440}} in pod["volumes"]
    auth = _deployment(_app(rs), "BigModelIngress")["user_config"]["auth"]
    assert auth == {"mode": "api_keys", "keys_dir": "/etc/bigmodel/api-keys"}
    assert key not in str(rs), "the key is mounted, never copied into the RayService"

    # Rotation is the user's: an edited Secret survives further reconciles (and an operator restart's 409).
    from kubernetes import client

    rotated = {"team-b": base64.b64encode(b"bm-rotated").decode()}
    client.CoreV1Api(api_client).patch_namespaced_secret("tiny-cpu-api-keys", namespace, {"data": rotated})
    _patch(custom, namespace, "tiny-cpu", {"spec": {"scaling": {"replicas": 2}}})
    wait_until(
        lambda: (
            _deployment(_app(_rayservice(custom, namespace, "tiny-cpu")), "BigModelEngine")["autoscaling_config"][
                "max_replicas"
            ]
            == 2
        ),
        timeout=30,
    )
    data = _secret(api_client, namespace, "tiny-cpu-api-keys").data
    assert set(data) == {"default", "team-b"} and base64.b64decode(data["default"]).decode() == key


def test_auth_mode_none_serves_openly_and_creates_no_secret(
    api_client: Any, custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    body = _tiny()
    body["spec"]["auth"] = {"mode": "none"}
    _create(custom, namespace, body)
    rs = wait_until(lambda: _rayservice(custom, namespace, "tiny-cpu"), timeout=30)
    assert _deployment(_app(rs), "BigModelIngress")["user_config"]["auth"] == {"mode": "none"}
    pod = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]
    assert not [v for v in pod["volumes"] if v["name"] == "api-keys"]
    assert _secret(api_client, namespace, "tiny-cpu-api-keys") is None


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"auth": {"mode": "none", "secretName": "keys"}}, "mode none serves without keys"),
        ({"adapters": [{"name": "a", "uri": "hf://org/adapter"}]}, "adapters are loaded from disk"),
        ({"auth": {"quotas": {"keys": {"bad key": {"requestsPerMinute": 1}}}}}, "every key must be a Secret data key"),
    ],
)
def test_admission_refuses_contradictory_serving_specs(
    custom: Any, namespace: str, patch: dict[str, Any], message: str
) -> None:
    from kubernetes.client.rest import ApiException

    body = _tiny()
    body["spec"].update(patch)
    with pytest.raises(ApiException) as refused:
        _create(custom, namespace, body)
    assert refused.value.status == 422
    assert message in str(refused.value.body)


def test_light_edits_change_deployment_options_not_the_hashed_app_args(
    custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    """Ray Serve restarts every engine replica when `args` change; scaling, keys, quotas and adapters must not."""
    body = _tiny()
    body["spec"]["engine"]["maxLoraRank"] = 64  # LoRA slots sized up front: adding adapters needs no reload
    _create(custom, namespace, body)
    before = _app(wait_until(lambda: _rayservice(custom, namespace, "tiny-cpu"), timeout=30))
    assert before["args"]["lora"]["max_lora_rank"] == 64
    _patch(
        custom,
        namespace,
        "tiny-cpu",
        {
            "spec": {
                "scaling": {"replicas": None, "minReplicas": 1, "maxReplicas": 3},
                "auth": {"quotas": {"default": {"requestsPerMinute": 60, "tokensPerMinute": 6000}}},
                "adapters": [{"name": "support", "uri": "file:///adapters/support", "rank": 32}],
            }
        },
    )

    def edited() -> dict[str, Any] | None:
        app = _app(_rayservice(custom, namespace, "tiny-cpu"))
        return app if _deployment(app, "BigModelEngine")["autoscaling_config"]["max_replicas"] == 3 else None

    after = wait_until(edited, timeout=30)
    assert after["args"] == before["args"], "a light edit reached the hashed args: it would reload the model"
    ingress = _deployment(after, "BigModelIngress")["user_config"]
    assert ingress["quotas"] == {"default": {"requests_per_minute": 60, "tokens_per_minute": 6000}}
    assert ingress["adapters"] == [
        {"name": "support", "uri": "file:///adapters/support", "local_path": "/adapters/support"}
    ]
    assert _deployment(after, "BigModelEngine")["user_config"]["adapters"] == ingress["adapters"]


def test_gpu_count_above_the_plan_gives_one_consistent_gpu_count(
    custom: Any, namespace: str, wait_until: Callable[..., Any]
) -> None:
    """gpu.count caps the plan; workers, engine parallelism and the plan agree (issue 10 item 7)."""
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "BigModel",
        "metadata": {"name": "llama-two-gpus"},
        "spec": {
            "model": {"uri": "hf://meta-llama/Llama-3.1-8B-Instruct", "config": LLAMA_8B_CONFIG},
            "engine": {"maxModelLen": 8192},
            "auth": {"mode": "none"},
            "resources": {"gpu": {"product": "NVIDIA-H100-80GB-HBM3", "count": 2}},
        },
    }
    _create(custom, namespace, body)
    rs = wait_until(lambda: _rayservice(custom, namespace, "llama-two-gpus"), timeout=30)
    plan = wait_until(lambda: (_bigmodel(custom, namespace, "llama-two-gpus").get("status") or {}).get("plan"))
    engine = _app(rs)["args"]["engine_args"]
    group = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
    per_replica = engine["tensor_parallel_size"] * engine["pipeline_parallel_size"]
    assert per_replica == plan["gpusPerReplica"] == 1
    assert int(limits["nvidia.com/gpu"]) * engine["pipeline_parallel_size"] == per_replica
    # The emptyDir receiving the downloaded weights is sized from the plan (issue 10 item 10).
    assert limits["ephemeral-storage"] == f"{4 + 10 + 16}Gi"  # 15.0 GiB of bf16 weights + 5% -> 16, cache 4, tmp 10
    cache = next(v for v in group["template"]["spec"]["volumes"] if v["name"] == "model-cache")
    assert cache["emptyDir"]["sizeLimit"] == "20Gi"
