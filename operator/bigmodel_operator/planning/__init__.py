"""GPU planning: what a model needs to be served or fine-tuned, from its config.json alone.

Pure and dependency-free (pydantic only): no Kubernetes, no torch. The operator puts the results
in ``status.plan`` and ``bigmodel plan FILE.yaml`` prints them offline. Formulas and constants are
explained in the module docstrings and in docs/planning.md.

    shape = parse_model_config(json.loads(config_json))
    plan = plan_serving(shape, lookup_gpu("NVIDIA-H100-80GB-HBM3"), max_model_len=8192)
    if not plan.fits:
        ...  # condition ModelTooLargeForGPU, message plan.reason
"""

from .activations import lora_parameters
from .errors import ModelConfigError, ModelConfigOutOfBoundsError, PlanningError
from .estimate import ParamCount, count_parameters, kv_bytes_per_token, weight_bytes
from .gpus import GPU_PRODUCTS, GpuLookupError, GpuProduct, gpu_table, lookup_gpu
from .model_config import ModelShape, parse_model_config
from .precision import Quantization
from .serving_plan import ServingPlan, plan_serving
from .training_plan import TrainingPlan, plan_training
from .units import human_params

__all__ = [
    "GPU_PRODUCTS",
    "GpuLookupError",
    "GpuProduct",
    "ModelConfigError",
    "ModelConfigOutOfBoundsError",
    "ModelShape",
    "ParamCount",
    "PlanningError",
    "Quantization",
    "ServingPlan",
    "TrainingPlan",
    "count_parameters",
    "gpu_table",
    "human_params",
    "kv_bytes_per_token",
    "lookup_gpu",
    "lora_parameters",
    "parse_model_config",
    "plan_serving",
    "plan_training",
    "weight_bytes",
]
