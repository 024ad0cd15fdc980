"""How one model replica is laid out on GPUs: the single source of the GPU count everything else renders.

A replica uses `tensor_parallel_size × pipeline_parallel_size` GPUs, taken from the plan when there is one
that fits (the plan already honours explicit engine sizes and caps the count at `resources.gpu.count`),
else from the spec. Worker pod GPUs, the engine's parallel sizes (from which the serving app derives
its placement bundles, one GPU each) and the worker group's pod count all come from this one object,
so they cannot disagree. It also carries what config.json decides about the engine besides GPUs: the
tool-call parser of the model's family (builders/tool_calling.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.tool_calling import tool_call_parser
from bigmodel_operator.planning import ServingPlan


@dataclass(frozen=True)
class Placement:
    """GPUs of one replica and how they split into Ray worker pods."""

    engine: str
    tensor_parallel_size: int
    pipeline_parallel_size: int
    max_model_len: int | None
    on_gpu: bool = True
    weight_bytes: int | None = None  # from the plan; sizes the scratch space that receives downloaded weights
    tool_call_parser: str | None = None  # vLLM's --tool-call-parser; None: tool calling off

    @property
    def gpus_per_replica(self) -> int:
        """tensor × pipeline parallel GPUs, or 0 on CPU."""
        return self.tensor_parallel_size * self.pipeline_parallel_size if self.on_gpu else 0

    @property
    def gpus_per_pod(self) -> int:
        """Each pipeline stage runs in one worker pod holding its tensor-parallel GPUs."""
        return self.tensor_parallel_size if self.on_gpu else 0

    @property
    def pods_per_replica(self) -> int:
        return self.pipeline_parallel_size if self.on_gpu else 1


def engine_of(spec: BigModelSpec) -> str:
    """The serving engine: vLLM (its CUDA build on GPUs, its CPU build when resources.gpu.count is 0)."""
    return (spec.runtime.engine if spec.runtime and spec.runtime.engine else None) or "vllm"


def placement(spec: BigModelSpec, plan: ServingPlan | None, model_config: Mapping[str, Any] | None = None) -> Placement:
    """Resolve GPUs and parallelism: a fitting plan wins, then explicit spec values, then one GPU.

    `model_config` is the model's config.json when the operator could read it (it names the family)."""
    engine = engine_of(spec)
    gpu = spec.resources.gpu if spec.resources else None
    count = gpu.count if gpu and gpu.count is not None else None
    max_len = _max_len(spec, plan)
    common: dict[str, Any] = {
        "weight_bytes": plan.weight_bytes if plan is not None else None,
        "tool_call_parser": tool_call_parser(spec, model_config),
    }
    if count == 0:
        return Placement(engine, 1, 1, max_len, on_gpu=False, **common)
    if plan is not None and plan.fits:
        return Placement(engine, plan.tensor_parallel_size, plan.pipeline_parallel_size, max_len, **common)
    eng = spec.engine
    pp = (eng.pipeline_parallel_size if eng else None) or 1
    tp = (eng.tensor_parallel_size if eng else None) or max(1, (count or 1) // pp)
    return Placement(engine, tp, pp, max_len, **common)


def _max_len(spec: BigModelSpec, plan: ServingPlan | None) -> int | None:
    if spec.engine and spec.engine.max_model_len:
        return spec.engine.max_model_len
    return plan.max_model_len if plan and plan.fits else None
