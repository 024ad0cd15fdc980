"""GPU tier: the trainer on a CUDA GPU (bf16 autocast, flex attention, compiled layers).

Run on a machine with a GPU: `PYTHONPATH=training pytest tests/gpu -m gpu`. Skipped without CUDA.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_fused_cross_entropy_in_bf16_matches_fp32_reference() -> None:
    from bigmodel_training.loss import completion_loss

    torch.manual_seed(0)
    head = torch.nn.Linear(256, 32000, bias=False, device="cuda", dtype=torch.bfloat16)
    hidden = torch.randn(2, 300, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    labels = torch.randint(0, 32000, (2, 300), device="cuda")
    labels[:, :100] = -100
    loss = completion_loss(hidden, labels, head, SimpleNamespace())  # a config without logit transforms
    loss.backward()
    grad = hidden.grad.float().clone()
    hidden.grad = None
    h32, w32 = hidden.float(), head.weight.float()
    logits = (h32[:, :-1] @ w32.t()).reshape(-1, 32000)
    reference = torch.nn.functional.cross_entropy(logits, labels[:, 1:].reshape(-1), reduction="sum")
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=2e-2)
    assert torch.linalg.norm(grad - hidden.grad.float()) / torch.linalg.norm(hidden.grad.float()) < 2e-2


def test_lora_training_end_to_end_on_gpu(tiny_model_dir: Path, tmp_path: Path) -> None:
    from bigmodel_training.config import TrainerConfig
    from bigmodel_training.runner import run

    data = tmp_path / "data.jsonl"
    data.write_text(
        "".join(
            json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus one?"},
                                     {"role": "assistant", "content": f"It is {i + 1}."}]}) + "\n"
            for i in range(32)
        )
    )  # fmt: skip
    config = TrainerConfig.model_validate(
        {
            "base_model": {"uri": f"file://{tiny_model_dir}"},
            "dataset": {"uri": f"file://{data}", "validation_split": 0.1},
            "method": {
                "type": "lora",
                "rank": 8,
                "target_modules": ["q_proj", "v_proj", "o_proj", "down_proj", "lm_head"],
            },
            "hyperparameters": {"max_steps": 30, "learning_rate": 1e-2, "batch_size": 4, "max_seq_length": 256},
            "output": {"uri": f"file://{tmp_path / 'out'}"},
            "checkpoint": {"every_steps": 10},
        }
    )
    metrics = run(config)
    losses = [h["loss"] for h in metrics["loss_curve"]]
    assert metrics["device"].startswith("cuda") and metrics["device"].endswith("bf16")
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0]
    assert (tmp_path / "out" / "adapter_model.safetensors").is_file()


def test_benchmark_recipe_runs_on_a_1b_model(tmp_path: Path) -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_lora import run_case  # type: ignore[import-not-found]

    result = run_case("1b-ours", steps=3, device="cuda")
    assert result["mfu"] > 0.25
    assert result["peak_memory_gib"] < 70
