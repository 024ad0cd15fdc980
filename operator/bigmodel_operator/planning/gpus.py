"""GPU products, keyed by the node label NVIDIA GPU feature discovery writes.

GPU feature discovery (GFD) sets ``nvidia.com/gpu.product`` to the NVML device name with spaces
replaced by dashes ("NVIDIA H100 80GB HBM3" → ``NVIDIA-H100-80GB-HBM3``); with the MIG "single"
strategy it appends the profile (``NVIDIA-A100-SXM4-40GB-MIG-3g.20gb``).

``memory_gib`` is the memory CUDA reports as total (``torch.cuda.mem_get_info()``), which is what
vLLM multiplies by ``gpu_memory_utilization``. It is a little below ``nvidia-smi``'s figure: on
the H100 80GB HBM3 we measured 79.18 GiB against nvidia-smi's 81,559 MiB (79.65 GiB); vLLM logs
report 79.22 GiB (H100) and 23.55 GiB (RTX 4090, nvidia-smi 24,564 MiB). For products not
measured the value is nvidia-smi's total minus 0.45 GiB (T4: 14.75 GiB, what torch reports for its
15,360 MiB). ``bf16_tflops`` is the dense (non-sparse) tensor throughput from NVIDIA's datasheets;
``None`` means the product has no bf16 (Turing).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError

from .units import PlanModel


class GpuLookupError(LookupError):
    """The GPU product is unknown, or an override for it is invalid."""


class GpuProduct(PlanModel):
    """One GPU product, as the planner needs it."""

    product: str = Field(description="Value of the nvidia.com/gpu.product node label, e.g. NVIDIA-H100-80GB-HBM3.")
    memory_gib: float = Field(gt=0, description="GPU memory visible to CUDA, in GiB.")
    bf16_tflops: float | None = Field(
        default=None, ge=0, description="Dense bf16 tensor TFLOP/s; null if bf16 is unsupported."
    )
    fp8: bool = Field(default=False, description="Native fp8 tensor cores (Ada, Hopper, Blackwell).")
    nvlink: bool = Field(default=False, description="GPUs in a node are linked by NVLink/NVSwitch.")

    @property
    def supports_bf16(self) -> bool:
        """Whether the product computes in bfloat16 (compute capability ≥ 8.0)."""
        return self.bf16_tflops is not None


def _gpu(product: str, memory_gib: float, tflops: float | None, fp8: bool, nvlink: bool) -> GpuProduct:
    return GpuProduct(product=product, memory_gib=memory_gib, bf16_tflops=tflops, fp8=fp8, nvlink=nvlink)


GPU_PRODUCTS: dict[str, GpuProduct] = {
    g.product: g
    for g in (
        _gpu("NVIDIA-B200", 178.61, 2250.0, True, True),  # 183,359 MiB
        _gpu("NVIDIA-H200", 139.95, 989.4, True, True),  # 143,771 MiB (SXM)
        _gpu("NVIDIA-H200-NVL", 139.95, 835.0, True, False),
        _gpu("NVIDIA-H100-80GB-HBM3", 79.18, 989.4, True, True),  # measured
        _gpu("NVIDIA-H100-PCIe", 79.18, 756.0, True, False),
        _gpu("NVIDIA-H100-NVL", 93.13, 835.0, True, False),  # 95,830 MiB
        _gpu("NVIDIA-A100-SXM4-80GB", 79.15, 312.0, False, True),  # 81,920 MiB
        _gpu("NVIDIA-A100-80GB-PCIe", 79.15, 312.0, False, False),
        _gpu("NVIDIA-A100-SXM4-40GB", 39.55, 312.0, False, True),  # 40,960 MiB
        _gpu("NVIDIA-A100-PCIE-40GB", 39.55, 312.0, False, False),
        _gpu("NVIDIA-L40S", 44.54, 362.1, True, False),  # 46,068 MiB
        _gpu("NVIDIA-L40", 44.54, 181.0, True, False),
        _gpu("NVIDIA-L4", 22.04, 121.0, True, False),  # 23,034 MiB
        _gpu("NVIDIA-A10G", 22.04, 70.0, False, False),  # 23,028 MiB
        _gpu("NVIDIA-A10", 22.04, 125.0, False, False),
        _gpu("NVIDIA-GeForce-RTX-4090", 23.55, 165.2, True, False),  # vLLM log
        _gpu("Tesla-T4", 14.75, None, False, False),  # 15,360 MiB; fp16 only (65 TFLOP/s)
    )
}
"""Built-in products. Extend or override with ``lookup_gpu(..., overrides=...)``."""

_FIELD_BY_KEY = {key: name for name, info in GpuProduct.model_fields.items() for key in (name, info.alias or name)}

_OVERRIDE_KEYS = sorted(info.alias or n for n, info in GpuProduct.model_fields.items() if n != "product")

_MIG = re.compile(r"^(?P<base>.+)-MIG-(?P<slices>\d+)g\.(?P<gb>\d+)gb$", re.IGNORECASE)
_MIG_MEMORY_FRACTION = 0.95
"""A MIG profile named "N gb" exposes a little less to CUDA (e.g. 3g.20gb ≈ 19.5 GiB)."""


def _normalize(label: str) -> str:
    return re.sub(r"[\s_]+", "-", label.strip()).lower()


def gpu_table(overrides: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, GpuProduct]:
    """The built-in table merged with operator-config overrides.

    ``overrides`` maps a product label to camelCase or snake_case fields, e.g.
    ``{"NVIDIA-H20": {"memoryGiB": 95.5, "fp8": true}}``. For a known label, the given fields replace
    the built-in ones; a new label needs at least ``memoryGiB``.
    """
    table = dict(GPU_PRODUCTS)
    for label, fields in (overrides or {}).items():
        base = table.get(label)
        data: dict[str, Any] = base.model_dump() if base else {}
        for key, value in fields.items():
            name = _FIELD_BY_KEY.get(key)
            if name is None or name == "product":
                raise GpuLookupError(
                    f"GPU override for {label!r} has unknown key {key!r}; use {', '.join(_OVERRIDE_KEYS)}"
                )
            data[name] = value
        if "memory_gib" not in data:
            raise GpuLookupError(f"GPU override for unknown product {label!r} needs memoryGiB")
        data["product"] = label
        try:
            table[label] = GpuProduct.model_validate(data)
        except ValidationError as exc:
            raise GpuLookupError(f"invalid GPU override for {label!r}: {exc}") from exc
    return table


def lookup_gpu(
    product: str,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    memory_gib: float | None = None,
) -> GpuProduct:
    """Find a GPU product by its ``nvidia.com/gpu.product`` label.

    Matching ignores case and treats spaces/underscores as dashes, so "NVIDIA H100 80GB HBM3" also
    works. A MIG label (``<product>-MIG-<n>g.<m>gb``) resolves to its base product with the
    profile's memory (× 0.95) and n/7 of its compute. ``memory_gib`` (the BigModel's
    ``resources.gpu.memoryGiB``) overrides the memory of the product found — or, for an unknown
    label, defines a product with just that memory. Raises :class:`GpuLookupError` otherwise.
    """
    if memory_gib is not None and memory_gib <= 0:
        raise GpuLookupError(f"memoryGiB must be positive, got {memory_gib}")
    table = gpu_table(overrides)
    by_key = {_normalize(label): gpu for label, gpu in table.items()}
    found = by_key.get(_normalize(product))
    if found is None and (mig := _MIG.match(product.strip())):
        base = by_key.get(_normalize(mig["base"]))
        if base is not None:
            slices = int(mig["slices"])
            found = base.model_copy(
                update={
                    "product": product.strip(),
                    "memory_gib": round(int(mig["gb"]) * _MIG_MEMORY_FRACTION, 2),
                    "bf16_tflops": (round(base.bf16_tflops * slices / 7, 1) if base.bf16_tflops else None),
                    "nvlink": False,
                }
            )
    if found is None:
        if memory_gib is not None:
            return GpuProduct(product=product, memory_gib=memory_gib)
        raise GpuLookupError(
            f"unknown GPU product {product!r}: set resources.gpu.memoryGiB, or add it to the "
            f"operator's gpuProducts config; known products: {', '.join(sorted(table))}"
        )
    if memory_gib is not None:
        found = found.model_copy(update={"memory_gib": memory_gib})
    return found
