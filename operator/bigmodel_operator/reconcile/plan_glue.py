"""Turn a spec + model config into a GPU plan and its condition reason (the planning library is pure)."""

from __future__ import annotations

from dataclasses import dataclass

from bigmodel_operator.api import BigModelSpec, FineTuneJobSpec
from bigmodel_operator.builders.serve_args import max_num_seqs
from bigmodel_operator.conditions import Reason
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.planning import (
    GpuLookupError,
    ModelConfigError,
    ModelConfigOutOfBoundsError,
    PlanningError,
    ServingPlan,
    TrainingPlan,
    lookup_gpu,
    parse_model_config,
    plan_serving,
    plan_training,
)
from bigmodel_operator.reconcile.model_source import ModelConfigResult

DEFAULT_GPU = "NVIDIA-H100-80GB-HBM3"


@dataclass
class ServingPlanResult:
    plan: ServingPlan | None
    reason: str
    message: str


@dataclass
class TrainingPlanResult:
    plan: TrainingPlan | None
    reason: str
    message: str
    gpus: int  # per pod
    nodes: int = 1
    strategy: str = "auto"  # what the trainer is told (its own auto: fsdp for full, ddp otherwise)


def _gpu(product: str | None, memory_gib: float | None, config: OperatorConfig):  # type: ignore[no-untyped-def]
    return lookup_gpu(product or DEFAULT_GPU, overrides=config.gpu_products, memory_gib=memory_gib)


def _why(error: Exception) -> tuple[str, str]:
    """(reason, message) of a planning failure: spec-caused ones get their own (blocking) reasons."""
    if isinstance(error, ModelConfigOutOfBoundsError):
        return Reason.MODEL_CONFIG_OUT_OF_BOUNDS, f"refused: {error}"
    if isinstance(error, PlanningError):
        return error.reason, f"cannot deploy: {error}"
    if isinstance(error, GpuLookupError):
        return Reason.UNKNOWN_GPU_PRODUCT, f"cannot plan: {error}"
    return Reason.MODEL_CONFIG_UNAVAILABLE, f"cannot plan: {error}"


def needs_gpu_plan(spec: BigModelSpec) -> bool:
    """False for vLLM's CPU build (resources.gpu.count 0): `serving_plan` answers at once, with no planning."""
    return not (spec.resources and spec.resources.gpu and spec.resources.gpu.count == 0)


def serving_plan(spec: BigModelSpec, source: ModelConfigResult, config: OperatorConfig) -> ServingPlanResult:
    """The serving plan, or why there is none (reason ModelConfigUnavailable / ModelTooLargeForGPU)."""
    if not needs_gpu_plan(spec):
        return ServingPlanResult(None, Reason.PLANNED, "vLLM's CPU build (resources.gpu.count 0): no GPU plan needed")
    if source.config is None:
        return ServingPlanResult(None, source.reason, source.message)
    gpu_spec = spec.resources.gpu if spec.resources else None
    eng = spec.engine
    try:
        shape = parse_model_config(source.config)
        gpu = _gpu(gpu_spec.product if gpu_spec else None, gpu_spec.memory_gib if gpu_spec else None, config)
        plan = plan_serving(
            shape,
            gpu,
            dtype=(eng.dtype if eng and eng.dtype else "auto"),
            quantization=eng.quantization if eng else None,
            kv_cache_dtype=(eng.kv_cache_dtype if eng and eng.kv_cache_dtype else "auto"),
            max_model_len=eng.max_model_len if eng else None,
            gpu_memory_utilization=(eng.gpu_memory_utilization if eng and eng.gpu_memory_utilization else 0.9),
            tensor_parallel_size=eng.tensor_parallel_size if eng else None,
            pipeline_parallel_size=eng.pipeline_parallel_size if eng else None,
            concurrency=1,
            max_num_seqs=max_num_seqs(spec),
            gpus_per_node=config.gpus_per_node,
            max_gpus=gpu_spec.count if gpu_spec and gpu_spec.count else None,
        )
    except (ModelConfigError, GpuLookupError, PlanningError) as error:
        return ServingPlanResult(None, *_why(error))
    if not plan.fits:
        return ServingPlanResult(plan, Reason.MODEL_TOO_LARGE_FOR_GPU, plan.reason)
    return ServingPlanResult(plan, Reason.PLANNED, plan.summary)


def training_plan(spec: FineTuneJobSpec, source: ModelConfigResult, config: OperatorConfig) -> TrainingPlanResult:
    """The training memory plan and the layout the Job gets: GPUs per pod, pods, ddp or fsdp.

    A count or node number the spec sets is kept; the plan fills in the rest (planning/training_plan.py).
    Without a readable model config the spec's own settings are used (one GPU by default).
    """
    gpu_spec = spec.resources.gpu if spec.resources else None
    explicit = gpu_spec.count if gpu_spec and gpu_spec.count is not None else None
    wanted = spec.distributed
    nodes = wanted.nodes if wanted and wanted.nodes else None
    strategy = wanted.strategy if wanted and wanted.strategy else "auto"
    fallback = TrainingPlanResult(None, "", "", 1 if explicit is None else explicit, nodes or 1, strategy)
    if source.config is None:
        fallback.reason, fallback.message = source.reason, source.message
        return fallback
    method = spec.method
    hyper = spec.hyperparameters
    cpu = explicit == 0
    try:
        shape = parse_model_config(source.config)
        gpu = _gpu(gpu_spec.product if gpu_spec else None, gpu_spec.memory_gib if gpu_spec else None, config)
        plan = plan_training(
            shape,
            gpu,
            method=(method.type if method and method.type else "lora"),
            rank=(method.rank if method and method.rank else 16),
            target_modules=method.target_modules if method else None,
            batch_size=(hyper.batch_size if hyper and hyper.batch_size else 8),
            max_seq_length=(hyper.max_seq_length if hyper and hyper.max_seq_length else 2048),
            gradient_checkpointing=True,
            gpus_per_node=config.gpus_per_node,
            # On the CPU (count 0) the plan is only a memory estimate for one device.
            gpus_per_pod=1 if cpu else explicit,
            nodes=1 if cpu else nodes,
            strategy=strategy,
        )
    except (ModelConfigError, GpuLookupError, PlanningError) as error:
        fallback.reason, fallback.message = _why(error)
        return fallback
    if cpu:  # CPU workers (gloo): the layout is the spec's, no GPU memory to fit
        return TrainingPlanResult(plan, Reason.PLANNED, plan.summary, 0, nodes or 1, strategy)
    if not plan.fits:
        return TrainingPlanResult(plan, Reason.MODEL_TOO_LARGE_FOR_GPU, plan.reason, fallback.gpus, fallback.nodes)
    chosen = plan.strategy if plan.strategy != "single" else strategy
    message = f"{plan.summary}; {plan.layout}"
    return TrainingPlanResult(plan, Reason.PLANNED, message, plan.gpus_per_pod, plan.nodes, chosen)
