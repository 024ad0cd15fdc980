"""The serving application the operator renders: one GPU count, light vs heavy settings, auth, LoRA, storage."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.api_keys import build_api_keys_secret, generate_api_key
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.rayservice import build_rayservice
from bigmodel_operator.builders.serve_args import api_keys_secret_name
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.planning import lookup_gpu, parse_model_config, plan_serving
from bigmodel_serving.args import parse_application

from .conftest import load_example

CONFIG = OperatorConfig()
LLAMA_8B = json.loads(
    (Path(__file__).resolve().parents[2] / "data" / "model-configs" / "meta-llama--Llama-3.1-8B.json").read_text()
)


def _render(
    body: dict[str, Any], *, plan: bool = False, promotions: Any = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(RayService, its one application) for a BigModel body, planned on an H100 when `plan`."""
    spec = BigModelSpec.model_validate(body["spec"])
    serving_plan = None
    if plan:
        gpu = spec.resources.gpu if spec.resources else None
        serving_plan = plan_serving(
            parse_model_config(LLAMA_8B),
            lookup_gpu("NVIDIA-H100-80GB-HBM3"),
            max_model_len=spec.engine.max_model_len if spec.engine else None,
            max_gpus=gpu.count if gpu else None,
        )
    rs = build_rayservice(body, spec, placement(spec, serving_plan), CONFIG, promotions)
    app = yaml.safe_load(rs["spec"]["serveConfigV2"])["applications"][0]
    parse_application(app)  # the contract: whatever we render, the serving app accepts
    return rs, app


def _worker(rs: dict[str, Any]) -> dict[str, Any]:
    group: dict[str, Any] = rs["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]
    return group


def _deployment(app: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d for d in app["deployments"] if d["name"] == name)


def _llama(**spec: Any) -> dict[str, Any]:
    body = load_example("bigmodel-llama-3.1-8b.yaml")
    body["spec"].update(spec)
    return body


@pytest.mark.parametrize(("count", "tp"), [(1, 1), (2, 1), (8, 1)])
def test_one_gpu_count_for_workers_engine_and_plan(count: int, tp: int) -> None:
    """gpu.count caps the plan; the plan's TP x PP is what every part asks for (issue 10 item 7)."""
    body = _llama(resources={"gpu": {"product": "NVIDIA-H100-80GB-HBM3", "count": count}})
    rs, app = _render(body, plan=True)
    engine = app["args"]["engine_args"]
    limits = _worker(rs)["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert (engine["tensor_parallel_size"], engine["pipeline_parallel_size"]) == (tp, 1)
    assert limits["nvidia.com/gpu"] == str(tp)


def test_explicit_tensor_parallel_without_a_plan_sets_every_part() -> None:
    body = _llama(engine={"tensorParallelSize": 2}, resources={"gpu": {"count": 2}})
    rs, app = _render(body)
    assert app["args"]["engine_args"]["tensor_parallel_size"] == 2
    assert _worker(rs)["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "2"


def test_cpu_replica_runs_vllms_cpu_build_with_a_small_memory_share() -> None:
    rs, app = _render(load_example("bigmodel-tiny-cpu.yaml"))
    assert app["args"]["resources"] == {"accelerator": "cpu", "num_cpus": 1}
    assert app["args"]["engine_args"]["gpu_memory_utilization"] == 0.05
    assert "nvidia.com/gpu" not in _worker(rs)["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert _worker(rs)["template"]["spec"]["containers"][0]["image"] == CONFIG.images.cpu


def test_ephemeral_storage_follows_the_planned_weights() -> None:
    """The emptyDir receiving hf:// weights is sized from the plan (issue 10 item 10)."""
    rs, _ = _render(_llama(), plan=True)
    pod = _worker(rs)["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["ephemeral-storage"] == resources["limits"]["ephemeral-storage"] == "30Gi"
    cache = next(v for v in pod["volumes"] if v["name"] == "model-cache")
    assert cache["emptyDir"]["sizeLimit"] == "20Gi"  # 14.96 GiB bf16 weights + 5% -> 16, plus 4 for caches
    tmp = next(v for v in pod["volumes"] if v["name"] == "tmp")
    assert tmp["emptyDir"]["sizeLimit"] == "10Gi"


def _disk(rs: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """(the worker container's ephemeral-storage limit, sizeLimit of each emptyDir) of a RayService."""
    pod = _worker(rs)["template"]["spec"]
    limits = pod["containers"][0]["resources"]["limits"]
    return limits["ephemeral-storage"], {
        v["name"]: v["emptyDir"].get("sizeLimit") for v in pod["volumes"] if "emptyDir" in v
    }


def test_every_pod_requests_disk_and_every_empty_dir_is_bounded() -> None:
    """Issue 21: unknown weights fall back to the operator's default; the user's value wins; the head too."""
    unplanned, _ = _render(_llama())
    assert _disk(unplanned) == (
        CONFIG.default_ephemeral_storage,
        {"dshm": "16Gi", "model-cache": "100Gi", "tmp": "100Gi"},
    )
    chosen, _ = _render(_llama(resources={"gpu": {"count": 1}, "ephemeralStorage": "250Gi"}), plan=True)
    assert _disk(chosen) == ("250Gi", {"dshm": "16Gi", "model-cache": "250Gi", "tmp": "250Gi"})
    local, _ = _render(load_example("bigmodel-tiny-cpu.yaml"))
    assert _disk(local)[0] == "14Gi"  # weights in the image: 4 GiB of caches, 10 of /tmp and logs
    head = local["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    resources = head["containers"][0]["resources"]
    assert resources["requests"]["ephemeral-storage"] == resources["limits"]["ephemeral-storage"] == "8Gi"
    assert all(v["emptyDir"].get("sizeLimit") for v in head["volumes"] if "emptyDir" in v)


def test_max_num_seqs_is_the_engines_setting_and_the_replicas_admission() -> None:
    _, default = _render(_llama())
    assert default["args"]["engine_args"]["max_num_seqs"] == 256  # vLLM's default, no cap of ours
    _, wide = _render(_llama(engine={"maxNumSeqs": 512}))
    engine = _deployment(wide, "BigModelEngine")
    assert wide["args"]["engine_args"]["max_num_seqs"] == engine["max_ongoing_requests"] == 512
    assert engine["max_queued_requests"] == 1024
    assert "max_ongoing_requests" not in _deployment(wide, "BigModelIngress")  # the app's: it never queues


@pytest.mark.parametrize(
    ("ranks", "max_lora_rank", "expected"),
    [
        ([8], None, 8),
        ([8, 48], None, 64),  # rounded up to a rank vLLM supports
        ([None], None, 16),  # the trainer's default rank
        ([16], 100, 128),
        ([], 64, 64),  # slots reserved before any adapter exists
        ([600 // 2], None, 320),
    ],
)
def test_lora_slots_hold_the_largest_adapter(ranks: list[int | None], max_lora_rank: int | None, expected: int) -> None:
    adapters = [
        {"name": f"a{i}", "uri": f"pvc://adapters/a{i}", **({"rank": r} if r else {})} for i, r in enumerate(ranks)
    ]
    body = load_example("bigmodel-tiny-cpu.yaml")
    body["spec"]["adapters"] = adapters or None
    if max_lora_rank:
        body["spec"]["engine"]["maxLoraRank"] = max_lora_rank
    _, app = _render(body)
    lora = app["args"]["lora"]
    assert lora["max_lora_rank"] == expected
    # maxLoraRank expects more adapters (FineTuneJobs): a fixed room, so adding some reloads nothing
    assert lora["max_loras"] == (4 if max_lora_rank else max(1, min(len(ranks), 4)))
    assert lora["max_cpu_loras"] >= len(ranks)


def test_declared_adapter_claims_turn_lora_on_so_the_first_job_reloads_nothing() -> None:
    """vLLM cannot turn LoRA on in a running engine: a BigModel that declares where adapters land gets LoRA
    slots from the start, and the first FineTuneJob to deploy there (rank 8 or 16) changes no engine arg."""
    from bigmodel_operator.builders.serve_args import Promotions

    body = load_example("bigmodel-tiny-cpu.yaml")
    body["spec"]["adapterClaims"] = ["adapters"]
    _, before = _render(body)
    assert before["args"]["lora"] == {"max_lora_rank": 16, "max_loras": 4, "max_cpu_loras": 8}
    for rank in (8, 16):
        _, after = _render(body, promotions=Promotions(adapter_names=1, lora_rank=rank))
        assert after["args"] == before["args"], rank
    _, larger = _render(body, promotions=Promotions(adapter_names=1, lora_rank=64))
    assert larger["args"]["lora"]["max_lora_rank"] == 64, "a larger rank needs larger slots (engine.maxLoraRank)"


def test_no_adapters_no_lora() -> None:
    _, app = _render(load_example("bigmodel-tiny-cpu.yaml"))
    assert "lora" not in app["args"]


def _light_variants(body: dict[str, Any]) -> list[dict[str, Any]]:
    variants = []
    for change in (
        {"scaling": {"minReplicas": 0, "maxReplicas": 7, "targetOngoingRequests": 3}},
        {"auth": {"secretName": "other-keys", "quotas": {"default": {"requestsPerMinute": 5}}}},
        {"adapters": [{"name": "b", "uri": "pvc://adapters/b", "rank": 64}]},
    ):
        variant = copy.deepcopy(body)
        variant["spec"].update(change)
        variants.append(variant)
    return variants


def test_light_edits_leave_the_hashed_args_alone() -> None:
    """Serve reloads every engine when `args` change: scaling, keys, quotas and adapters must not touch them."""
    body = load_example("bigmodel-tiny-cpu.yaml")
    body["spec"]["engine"]["maxLoraRank"] = 64
    body["spec"]["adapters"] = [{"name": "a", "uri": "pvc://adapters/a", "rank": 16}]
    _, base = _render(body)
    for variant in _light_variants(body):
        _, app = _render(variant)
        assert app["args"] == base["args"], variant["spec"]
        assert app["deployments"] != base["deployments"], variant["spec"]
    heavy = copy.deepcopy(body)
    heavy["spec"]["engine"]["maxModelLen"] = 1024
    assert _render(heavy)[1]["args"] != base["args"]


def test_auth_modes_and_quotas() -> None:
    default = load_example("bigmodel-tiny-cpu.yaml")
    spec = BigModelSpec.model_validate(default["spec"])
    assert api_keys_secret_name("tiny-cpu", spec) == "tiny-cpu-api-keys"
    _, app = _render(default)
    assert _deployment(app, "BigModelIngress")["user_config"]["auth"]["mode"] == "api_keys"

    _, named = _render(_llama())
    ingress = _deployment(named, "BigModelIngress")["user_config"]
    assert ingress["quotas"] == {"default": {"requests_per_minute": 600, "tokens_per_minute": 200000}}

    opened = load_example("bigmodel-tiny-cpu.yaml")
    opened["spec"]["auth"] = {"mode": "none"}
    assert api_keys_secret_name("tiny-cpu", BigModelSpec.model_validate(opened["spec"])) is None
    rs, app = _render(opened)
    assert _deployment(app, "BigModelIngress")["user_config"]["auth"] == {"mode": "none"}
    assert not [v for v in _worker(rs)["template"]["spec"]["volumes"] if v["name"] == "api-keys"]


def test_api_keys_reach_every_ray_pod() -> None:
    """The ingress (0 CPUs) may be placed on the head as well as on a worker (seen on the e2e node)."""
    rs, _ = _render(load_example("bigmodel-tiny-cpu.yaml"))
    cluster = rs["spec"]["rayClusterConfig"]
    for template in (cluster["headGroupSpec"]["template"], _worker(rs)["template"]):
        pod = template["spec"]
        assert {"name": "api-keys", "secret": {"secretName": "tiny-cpu-api-keys", "defaultMode": 0o440}} in pod[
            "volumes"
        ]
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "api-keys", "mountPath": "/etc/bigmodel/api-keys", "readOnly": True} in mounts


def test_generated_keys_secret() -> None:
    body = load_example("bigmodel-tiny-cpu.yaml")
    key = generate_api_key()
    assert key.startswith("bm-") and len(key) >= 40 and key != generate_api_key()
    secret = build_api_keys_secret(body, "tiny-cpu-api-keys", key)
    assert base64.b64decode(secret["data"]["default"]).decode() == key
    assert secret["metadata"]["ownerReferences"][0]["controller"] is True
    assert secret["metadata"]["labels"]["app.kubernetes.io/component"] == "api-keys"


def test_extra_args_become_engine_kwargs_by_name() -> None:
    body = _llama(engine={"extraArgs": ["--max-num-batched-tokens=16384", "--enforce-eager", "--no-async-scheduling"]})
    _, app = _render(body)
    engine = app["args"]["engine_args"]
    assert engine["enforce_eager"] is True  # a typed field of the app's contract
    assert engine["extra"] == {
        "max_num_batched_tokens": 16384,
        "async_scheduling": False,
        "enable_auto_tool_choice": True,  # no config.json here: the fallback parser
        "tool_call_parser": "hermes",
    }
