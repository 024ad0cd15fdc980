"""The operator -> app contract: ServeArgs parsing, errors, deployment options, light imports."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bigmodel_serving.app import CONTROL_HEADROOM, deployment_options
from bigmodel_serving.args import InvalidServeArgsError, ServeArgs, parse_serve_args

FULL_ARGS: dict[str, Any] = {
    "model": {
        "uri": "hf://meta-llama/Llama-3.1-8B-Instruct",
        "revision": "main",
        "served_name": "llama-8b",
        "tokenizer": None,
        "local_path": "/models/llama",
    },
    "engine": "vllm",
    "engine_args": {
        "max_model_len": 8192,
        "dtype": "bfloat16",
        "quantization": None,
        "gpu_memory_utilization": 0.9,
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "enable_prefix_caching": True,
        "extra_args": ["--max-lora-rank=64"],
    },
    "adapters": [{"name": "sql", "uri": "s3://bucket/sql", "local_path": "/adapters/sql"}],
    "auth": {"api_keys_file": "/etc/bigmodel/keys/keys"},
    "limits": {
        "max_body_bytes": 1_048_576,
        "max_n": 8,
        "request_timeout_s": 600,
        "max_ongoing_requests": 32,
        "max_queued_requests": 64,
    },
    "scaling": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 16},
    "replica_resources": {"num_gpus": 1, "num_cpus": 4},
    "request_log": {"enabled": True, "path": "/var/log/bigmodel/requests.jsonl", "redact_pii": True},
    "hf_token_env": "HF_TOKEN",
}


def test_full_args_round_trip() -> None:
    args = parse_serve_args(FULL_ARGS)
    assert args.model_dump(mode="json") == FULL_ARGS
    assert args.model_names() == ["llama-8b", "llama-8b:sql"]
    assert args.model.resolved_local_path() == Path("/models/llama")
    assert args.model.hub_id() == "meta-llama/Llama-3.1-8B-Instruct"


def test_minimal_args_get_defaults() -> None:
    args = parse_serve_args({"model": {"uri": "file:///m/tiny", "served_name": "tiny"}, "engine": "transformers"})
    assert args.model.resolved_local_path() == Path("/m/tiny")
    assert args.limits.max_body_bytes == 1_048_576
    assert args.auth.api_keys_file is None
    assert args.hf_token_env == "HF_TOKEN"


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"engine": "tgi"}, "engine: Input should be 'vllm' or 'transformers'"),
        ({"model": {"uri": "ftp://x", "served_name": "m"}}, "model.uri: Value error, model.uri scheme"),
        ({"model": {"uri": "hf://a/b", "served_name": "a:b"}}, "must not contain ':'"),
        ({"limits": {"max_n": 0}}, "limits.max_n: Input should be greater than or equal to 1"),
        ({"scaling": {"min_replicas": 3, "max_replicas": 1}}, "min_replicas must be <= scaling.max_replicas"),
        ({"request_log": {"enabled": True}}, "request_log.path is required"),
        ({"unknown_field": 1}, "unknown_field: Extra inputs are not permitted"),
        ({"adapters": [{"name": "a", "uri": "s3://x"}, {"name": "a", "uri": "s3://y"}]}, "repeated: a"),
        ({"adapters": [{"name": "bad name", "uri": "s3://x"}]}, "adapters.0.name"),
    ],
)
def test_invalid_args_give_clear_messages(change: dict[str, Any], expected: str) -> None:
    with pytest.raises(InvalidServeArgsError) as error:
        parse_serve_args({**FULL_ARGS, **change})
    assert expected in str(error.value)
    assert str(error.value).startswith("invalid bigmodel serve args:")


def test_deployment_options_apply_limits_scaling_and_resources() -> None:
    options = deployment_options(parse_serve_args(FULL_ARGS))
    assert options["max_ongoing_requests"] == 32 + 64 + CONTROL_HEADROOM
    assert options["max_queued_requests"] == 64
    assert options["backpressure_config"] == {"status_code": 429, "retry_after_s": 1}
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "initial_replicas": 1,
        "target_ongoing_requests": 16,
    }
    assert options["ray_actor_options"] == {"num_cpus": 4, "num_gpus": 1}
    assert "placement_group_bundles" not in options


def test_deployment_options_place_tensor_parallel_workers() -> None:
    args = parse_serve_args({**FULL_ARGS, "engine_args": {"tensor_parallel_size": 2, "pipeline_parallel_size": 2}})
    options = deployment_options(args)
    assert options["placement_group_bundles"] == [{"CPU": 4}] + [{"GPU": 1}] * 4
    assert options["ray_actor_options"]["num_gpus"] == 0


def test_deployment_options_are_valid_for_serve() -> None:
    """Serve itself accepts the options (checked without starting Ray)."""
    from ray import serve

    from bigmodel_serving.deployment import BigModelServer

    deployment = BigModelServer.options(**deployment_options(parse_serve_args(FULL_ARGS)))
    assert isinstance(deployment, serve.Deployment)
    assert deployment.max_ongoing_requests == 32 + 64 + CONTROL_HEADROOM


def test_args_and_app_modules_do_not_import_heavy_libraries() -> None:
    code = (
        "import sys, bigmodel_serving.args, bigmodel_serving.app, bigmodel_serving.engines.vllm_args;"
        "heavy = [m for m in ('ray', 'torch', 'transformers', 'vllm', 'peft') if m in sys.modules];"
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_serve_args_instance_passes_through() -> None:
    args = ServeArgs.model_validate(FULL_ARGS)
    assert parse_serve_args(args) is args
