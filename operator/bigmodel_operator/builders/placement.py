"""How one model replica is laid out on GPUs: derived from the spec, then the plan, then defaults."""

from __future__ import annotations

from dataclasses import dataclass

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.planning import ServingPlan


@dataclass(frozen=True)
class Placement:
    """GPUs of one replica and how they split into Ray worker pods."""

    engine: str
    gpus_per_replica: int
    tensor_parallel_size: int
    pipeline_parallel_size: int
    max_model_len: int | None

    @property
    def gpus_per_pod(self) -> int:
        """Each pipeline stage runs in one worker pod holding its tensor-parallel GPUs."""
        return self.tensor_parallel_size if self.gpus_per_replica else 0

    @property
    def pods_per_replica(self) -> int:
        return self.pipeline_parallel_size if self.gpus_per_replica else 1


def engine_of(spec: BigModelSpec) -> str:
    """The serving engine: vllm unless the spec asks for transformers."""
    return (spec.runtime.engine if spec.runtime and spec.runtime.engine else None) or "vllm"


def placement(spec: BigModelSpec, plan: ServingPlan | None) -> Placement:
    """Resolve GPUs and parallelism: explicit spec values win, then the plan, then safe defaults."""
    engine = engine_of(spec)
    gpu = spec.resources.gpu if spec.resources else None
    eng = spec.engine
    default_gpus = 1 if engine == "vllm" else 0
    tp = (eng.tensor_parallel_size if eng else None) or (plan.tensor_parallel_size if plan else None)
    pp = (eng.pipeline_parallel_size if eng else None) or (plan.pipeline_parallel_size if plan else None) or 1
    count = gpu.count if gpu and gpu.count is not None else None
    if count is None:
        count = plan.gpus_per_replica if plan and plan.fits else (tp or 1) * pp if engine == "vllm" else default_gpus
    if count == 0:
        return Placement(engine, 0, 1, 1, _max_len(spec, plan))
    if tp is None:
        tp = max(1, count // pp)
    return Placement(engine, count, tp, pp, _max_len(spec, plan))


def _max_len(spec: BigModelSpec, plan: ServingPlan | None) -> int | None:
    if spec.engine and spec.engine.max_model_len:
        return spec.engine.max_model_len
    return plan.max_model_len if plan and plan.fits else None
