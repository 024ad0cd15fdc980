"""Data types and weight quantization: how many bytes one parameter takes.

Dense formats: fp32 4 B, fp16/bf16 2 B, fp8 1 B. Quantized formats store ``bits/8`` bytes per
weight plus per-group metadata, which we account for exactly per format:

- AWQ / GPTQ (group size g, default 128): a fp16 scale (2 B) and a packed ``bits``-bit zero point per
  group → ``bits/8 + (2 + bits/8)/g`` B; 4-bit g=128 → 0.5195 B (+3.9 %).
- bitsandbytes NF4 (QLoRA, block 64): a fp32 absmax per block (+0.0625 B); with double quantization
  the absmax is itself 8-bit with a fp32 constant per 256 blocks → ``1/64 + 4/(64·256)`` = +0.0159 B
  (the QLoRA paper's 0.127 bits/parameter).
- fp8 (static or vLLM's online ``--quantization fp8``): 1 B; per-tensor/channel/128×128-block scales
  are negligible. MXFP4: 4 bits + one e8m0 scale per 32 (+1/32 B). NVFP4: 4 bits + an fp8 scale per
  16 (+1/16 B).

Only the linear layers of the decoder blocks are quantized (GPTQ, AWQ, bitsandbytes and vLLM's fp8
all leave embeddings, lm_head, norms and routers in the activation dtype); MXFP4 checkpoints
(gpt-oss) quantize only the MoE experts.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError

from .errors import QUANTIZATION_MISMATCH, ModelConfigError, PlanningError
from .units import PlanModel

DTYPE_BYTES: dict[str, int] = {"float32": 4, "float16": 2, "bfloat16": 2, "float8": 1}

_DTYPE_ALIASES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float8": "float8", "fp8": "float8", "float8_e4m3fn": "float8", "float8_e5m2": "float8",
    "fp8_e4m3": "float8", "fp8_e5m2": "float8", "fp8_inc": "float8", "fp8_ds_mla": "float8",
}  # fmt: skip


def normalize_dtype(value: str) -> str:
    """Map a torch/vLLM dtype spelling ("torch.bfloat16", "bf16", "half", "fp8_e4m3") to one of
    ``float32``, ``float16``, ``bfloat16``, ``float8``. Raises ``ValueError`` for others."""
    key = value.strip().lower().removeprefix("torch.")
    if key not in _DTYPE_ALIASES:
        raise ValueError(f"unsupported dtype {value!r}; use one of {', '.join(sorted(DTYPE_BYTES))}")
    return _DTYPE_ALIASES[key]


class Quantization(PlanModel):
    """A weight quantization scheme, from config.json's quantization_config or an engine arg."""

    method: str = Field(description="awq, gptq, fp8, bitsandbytes, compressed-tensors, mxfp4, ...")
    bits: int = Field(ge=1, le=16, description="Bits per quantized weight.")
    group_size: int | None = Field(default=None, description="Weights sharing one scale, if grouped.")
    scale_bytes_per_weight: float = Field(
        default=0.0, ge=0, description="Metadata (scales, zero points) per weight, in bytes."
    )
    experts_only: bool = Field(default=False, description="Only MoE expert weights are quantized.")

    @property
    def bytes_per_weight(self) -> float:
        """Storage per quantized weight, metadata included."""
        return self.bits / 8 + self.scale_bytes_per_weight

    @property
    def label(self) -> str:
        """Short human form, e.g. ``awq 4-bit g128``."""
        group = f" g{self.group_size}" if self.group_size and self.group_size > 0 else ""
        return f"{self.method} {self.bits}-bit{group}"


def _grouped(method: str, bits: int, group: int | None, zero_point: bool = True) -> Quantization:
    """Integer quantization with a fp16 scale (and a ``bits``-bit zero point) per group."""
    per_group = 2 + (bits / 8 if zero_point else 0)
    scale = per_group / group if group and group > 0 else 0.0
    return Quantization(method=method, bits=bits, group_size=group, scale_bytes_per_weight=scale)


def bnb_4bit(double_quant: bool = True) -> Quantization:
    """bitsandbytes NF4 with block size 64 (the QLoRA recipe)."""
    scale = 1 / 64 + 4 / (64 * 256) if double_quant else 4 / 64
    return Quantization(method="bitsandbytes", bits=4, group_size=64, scale_bytes_per_weight=scale)


def _first_int(cfg: Mapping[str, Any], *keys: str, default: int | None) -> int | None:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return default


def parse_quantization_config(cfg: Mapping[str, Any]) -> Quantization:
    """Parse config.json's ``quantization_config`` (raises :class:`ModelConfigError`)."""
    try:
        return _parse_quantization(cfg)
    except ValidationError as exc:
        raise ModelConfigError(f"invalid quantization_config: {exc}", key="quantization_config") from exc


def _parse_quantization(cfg: Mapping[str, Any]) -> Quantization:
    method = str(cfg.get("quant_method", "")).lower().replace("_marlin", "").replace("marlin", "gptq")
    if method in ("awq", "gptq"):
        bits = _first_int(cfg, "bits", "w_bit", default=4) or 4
        group = _first_int(cfg, "group_size", "q_group_size", default=128)
        return _grouped(method, bits, group)
    if method in ("fp8", "fbgemm_fp8", "ptpc_fp8"):
        return Quantization(method="fp8", bits=8)
    if method == "bitsandbytes":
        if cfg.get("load_in_8bit"):
            return Quantization(method="bitsandbytes", bits=8)
        return bnb_4bit(bool(cfg.get("bnb_4bit_use_double_quant", False)))
    if method == "mxfp4":
        return Quantization(method="mxfp4", bits=4, group_size=32, scale_bytes_per_weight=1 / 32, experts_only=True)
    if method == "modelopt":
        nested = cfg.get("quantization")
        algo = str(cfg.get("quant_algo") or (nested.get("quant_algo") if isinstance(nested, dict) else None) or "FP8")
        if "FP4" in algo.upper():
            return Quantization(method="nvfp4", bits=4, group_size=16, scale_bytes_per_weight=1 / 16)
        return Quantization(method="fp8", bits=8)
    if method == "compressed-tensors":
        return _compressed_tensors(cfg)
    raise ModelConfigError(
        f"unsupported quantization_config.quant_method {cfg.get('quant_method')!r}; supported: "
        "awq, gptq, fp8, bitsandbytes, compressed-tensors, mxfp4, modelopt",
        key="quantization_config.quant_method",
    )


def _compressed_tensors(cfg: Mapping[str, Any]) -> Quantization:
    groups = cfg.get("config_groups")
    groups = groups if isinstance(groups, dict) else {}
    weights = next((g.get("weights") for g in groups.values() if isinstance(g, dict) and g.get("weights")), None)
    if not isinstance(weights, dict):
        raise ModelConfigError(
            "compressed-tensors quantization_config has no config_groups.*.weights",
            key="quantization_config.config_groups",
        )
    bits = _first_int(weights, "num_bits", default=8) or 8
    if weights.get("type") == "float":
        return Quantization(method="compressed-tensors", bits=bits)
    group = _first_int(weights, "group_size", default=None) if weights.get("strategy") == "group" else None
    return _grouped("compressed-tensors", bits, group, zero_point=not weights.get("symmetric", True))


_ENGINE_ONLINE: dict[str, Quantization] = {
    "fp8": Quantization(method="fp8", bits=8),
    "ptpc_fp8": Quantization(method="fp8", bits=8),
    "fbgemm_fp8": Quantization(method="fp8", bits=8),
    "bitsandbytes": bnb_4bit(double_quant=False),
    "experts_int8": Quantization(method="experts_int8", bits=8, experts_only=True),
}
"""vLLM ``--quantization`` values that quantize an unquantized checkpoint while loading it."""


def resolve_quantization(
    engine_quantization: str | None, config_quantization: Quantization | None
) -> Quantization | None:
    """The quantization vLLM will run with: the checkpoint's own quantization_config wins (vLLM
    reads its bits and groups; the engine arg only picks a kernel such as awq_marlin); without one,
    ``--quantization`` fp8 / bitsandbytes / experts_int8 quantize while loading. Pre-quantized
    formats (awq, gptq, ...) named on an unquantized checkpoint raise :class:`PlanningError`."""
    if config_quantization is not None:
        return config_quantization
    if not engine_quantization:
        return None
    method = engine_quantization.strip().lower()
    if method in _ENGINE_ONLINE:
        return _ENGINE_ONLINE[method]
    raise PlanningError(
        reason=QUANTIZATION_MISMATCH,
        message=f"quantization {engine_quantization!r} needs a checkpoint quantized with it (config.json "
        f"has no quantization_config); on an unquantized model use one of "
        f"{', '.join(sorted(_ENGINE_ONLINE))}",
    )
