"""GPU product table: lookup by node label, overrides from the operator config, MIG profiles."""

from __future__ import annotations

import pytest

from bigmodel_operator.planning import GPU_PRODUCTS, GpuLookupError, gpu_table, lookup_gpu


@pytest.mark.parametrize(
    ("label", "memory_gib", "fp8", "nvlink"),
    [
        ("NVIDIA-H100-80GB-HBM3", 79.18, True, True),
        ("NVIDIA-H100-PCIe", 79.18, True, False),
        ("NVIDIA-H200", 139.95, True, True),
        ("NVIDIA-B200", 178.61, True, True),
        ("NVIDIA-A100-SXM4-80GB", 79.15, False, True),
        ("NVIDIA-A100-SXM4-40GB", 39.55, False, True),
        ("NVIDIA-A100-80GB-PCIe", 79.15, False, False),
        ("NVIDIA-A100-PCIE-40GB", 39.55, False, False),
        ("NVIDIA-L40S", 44.54, True, False),
        ("NVIDIA-L4", 22.04, True, False),
        ("NVIDIA-A10G", 22.04, False, False),
        ("Tesla-T4", 14.75, False, False),
        ("NVIDIA-GeForce-RTX-4090", 23.55, True, False),
    ],
)
def test_builtin_products(label: str, memory_gib: float, fp8: bool, nvlink: bool) -> None:
    gpu = lookup_gpu(label)
    assert (gpu.product, gpu.memory_gib, gpu.fp8, gpu.nvlink) == (label, memory_gib, fp8, nvlink)


def test_every_product_has_memory_and_only_turing_lacks_bf16() -> None:
    assert all(g.memory_gib > 10 for g in GPU_PRODUCTS.values())
    assert [g.product for g in GPU_PRODUCTS.values() if not g.supports_bf16] == ["Tesla-T4"]


@pytest.mark.parametrize("spelling", ["nvidia h100 80gb hbm3", "NVIDIA_H100_80GB_HBM3", " NVIDIA-H100-80GB-HBM3 "])
def test_lookup_is_lenient_about_case_and_separators(spelling: str) -> None:
    assert lookup_gpu(spelling).product == "NVIDIA-H100-80GB-HBM3"


def test_unknown_product_error_names_the_label_and_the_fixes() -> None:
    with pytest.raises(GpuLookupError, match=r"'NVIDIA-H20'.*memoryGiB.*NVIDIA-H100-80GB-HBM3"):
        lookup_gpu("NVIDIA-H20")


def test_memory_gib_defines_an_unknown_product_and_overrides_a_known_one() -> None:
    assert lookup_gpu("NVIDIA-H20", memory_gib=95.0).memory_gib == 95.0
    gpu = lookup_gpu("NVIDIA-L4", memory_gib=20.0)
    assert (gpu.memory_gib, gpu.fp8) == (20.0, True)
    with pytest.raises(GpuLookupError, match="positive"):
        lookup_gpu("NVIDIA-L4", memory_gib=0)


def test_operator_config_overrides_extend_and_replace() -> None:
    overrides = {
        "NVIDIA-H20": {"memoryGiB": 95.5, "fp8": True, "bf16Tflops": 148},
        "NVIDIA-L4": {"memory_gib": 21.5},
    }
    table = gpu_table(overrides)
    assert table["NVIDIA-H20"].memory_gib == 95.5
    assert table["NVIDIA-H20"].fp8
    assert table["NVIDIA-L4"].memory_gib == 21.5
    assert table["NVIDIA-L4"].bf16_tflops == 121.0  # untouched fields keep the built-in value
    assert lookup_gpu("nvidia-h20", overrides=overrides).bf16_tflops == 148
    assert GPU_PRODUCTS["NVIDIA-L4"].memory_gib == 22.04  # the built-in table is not mutated


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"NVIDIA-H20": {"fp8": True}}, "needs memoryGiB"),
        ({"NVIDIA-H20": {"memoryGiB": -1}}, "invalid GPU override"),
        ({"NVIDIA-L4": {"memoryGB": 24}}, "unknown key 'memoryGB'"),
    ],
)
def test_bad_overrides_are_rejected(overrides: dict[str, dict[str, object]], message: str) -> None:
    with pytest.raises(GpuLookupError, match=message):
        gpu_table(overrides)


def test_mig_profile_label_gets_a_slice_of_the_base_product() -> None:
    gpu = lookup_gpu("NVIDIA-A100-SXM4-80GB-MIG-3g.40gb")
    assert gpu.memory_gib == 38.0  # 40 GB profile × 0.95
    assert gpu.bf16_tflops == pytest.approx(312 * 3 / 7, abs=0.1)
    assert not gpu.nvlink


def test_products_serialize_with_camel_case_aliases() -> None:
    dumped = lookup_gpu("NVIDIA-L4").model_dump(by_alias=True)
    assert dumped == {"product": "NVIDIA-L4", "memoryGiB": 22.04, "bf16Tflops": 121.0, "fp8": True, "nvlink": False}
