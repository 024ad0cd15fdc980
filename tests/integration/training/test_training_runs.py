"""Real training runs on the CPU: loss goes down, outputs load, resume continues exactly."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from bigmodel_training.checkpoint import complete_checkpoints
from bigmodel_training.config import TrainerConfig
from bigmodel_training.runner import run


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def _losses(metrics: dict[str, Any]) -> list[float]:
    return [h["loss"] for h in metrics["loss_curve"]]


def test_lora_learns_and_the_adapter_changes_the_model(
    make_config: Callable[..., TrainerConfig], tiny_model_dir: Path
) -> None:
    config = make_config(
        method={
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"]
        },
        hyperparameters={"gradient_checkpointing": True},
        dataset={"validation_split": 0.2},
    )
    metrics = run(config)
    losses = _losses(metrics)
    assert len(losses) == 30
    assert _mean(losses[-5:]) < 0.6 * _mean(losses[:3]), losses
    assert metrics["eval_loss"] is not None
    assert metrics["eval_examples"] == 3
    assert metrics["tokens_per_second"] > 0

    out = Path(config.output.uri.removeprefix("file://"))
    for name in ("adapter_config.json", "adapter_model.safetensors", "metrics.json"):
        assert (out / name).is_file(), name
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == config.base_model.uri
    assert [step for step, _ in complete_checkpoints(out)] == [20, 30]  # keep=2
    progress = json.loads((out / "progress.json").read_text())["status"]
    assert progress["adapterUri"] == config.output.uri
    assert progress["progress"]["step"] == progress["progress"]["totalSteps"] == 30
    assert progress["checkpoint"].endswith("/checkpoints/step-00000030")

    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bigmodel_training.dataset import validate_file
    from bigmodel_training.render import Renderer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    renderer = Renderer(tokenizer)
    examples = validate_file(config.dataset.uri.removeprefix("file://"), "chat").examples
    batch = [renderer.tokenize(e) for e in examples[:4]]

    def loss(model: Any) -> float:
        with torch.no_grad():
            return _mean(
                [
                    model(input_ids=torch.tensor([t.input_ids]), labels=torch.tensor([t.labels])).loss.item()
                    for t in batch
                ]
            )

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([batch[0].input_ids])
    with torch.no_grad():
        before_logits, before_loss = base(input_ids=ids).logits, loss(base)
        adapted = PeftModel.from_pretrained(base, out)
        after_logits, after_loss = adapted(input_ids=ids).logits, loss(adapted)
    assert not torch.allclose(before_logits, after_logits, atol=1e-3)
    assert after_loss < 0.6 * before_loss, (before_loss, after_loss)


def test_full_fine_tuning_writes_a_loadable_model(make_config: Callable[..., TrainerConfig]) -> None:
    config = make_config(method={"type": "full"}, hyperparameters={"max_steps": 20, "learning_rate": 1e-2})
    metrics = run(config)
    losses = _losses(metrics)
    assert _mean(losses[-3:]) < 0.5 * losses[0], losses
    assert metrics["trainable_parameters"] == metrics["total_parameters"]
    out = Path(config.output.uri.removeprefix("file://"))
    assert (out / "model.safetensors").is_file()
    assert not (out / "adapter_config.json").exists()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(out)
    AutoTokenizer.from_pretrained(out)


def test_resume_after_a_crash_matches_an_uninterrupted_run(make_config: Callable[..., TrainerConfig]) -> None:
    settings: dict[str, Any] = {
        "method": {"dropout": 0.1},  # dropout draws from the RNG the checkpoint restores
        "hyperparameters": {"max_steps": 12},
        "checkpoint": {"every_steps": 4, "keep": 3},
        "dataset": {"validation_split": 0.2},
    }
    reference = run(make_config("reference", **settings))

    crashing = make_config("crashing", **settings)

    def crash(step: int) -> None:
        if step == 6:
            raise RuntimeError("simulated node failure")

    with pytest.raises(RuntimeError, match="simulated"):
        run(crashing, on_step=crash)
    out = Path(crashing.output.uri.removeprefix("file://"))
    assert [step for step, _ in complete_checkpoints(out)] == [4]
    resumed = run(crashing)
    assert resumed["resumed_from_step"] == 4
    assert [h["step"] for h in resumed["loss_curve"]] == list(range(1, 13))
    assert _losses(resumed) == pytest.approx(_losses(reference), abs=1e-4)
    evals = [e["eval_loss"] for e in resumed["eval_loss_curve"]]
    assert evals == pytest.approx([e["eval_loss"] for e in reference["eval_loss_curve"]], abs=1e-4)


def test_pii_is_redacted_before_training(
    make_config: Callable[..., TrainerConfig], write_chat_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    pii = [
        {"messages": [{"role": "user", "content": f"Mail me at person{i}@example.com or call +1 415 555 01{i:02d}"},
                      {"role": "assistant", "content": "Noted, thanks."}]}
        for i in range(3)
    ]  # fmt: skip
    dataset = write_chat_dataset(tmp_path / "pii.jsonl", extra=pii)
    config = make_config(
        "redacted", dataset={"uri": f"file://{dataset}"}, privacy={"redact_pii": True}, hyperparameters={"max_steps": 2}
    )
    metrics = run(config)
    assert metrics["redactions"] == {"EMAIL": 3, "PHONE": 3}
    progress = json.loads((Path(config.output.uri.removeprefix("file://")) / "progress.json").read_text())
    assert progress["status"]["redactions"] == {"EMAIL": 3, "PHONE": 3}
    assert "person0@example.com" in dataset.read_text()  # the input file itself is never rewritten


def test_packed_loss_equals_unpacked_loss(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bigmodel_training.dataset import Example
    from bigmodel_training.loss import completion_loss
    from bigmodel_training.packing import collate, pack_rows
    from bigmodel_training.render import Renderer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, attn_implementation="sdpa")
    renderer = Renderer(tokenizer)
    examples = [
        renderer.tokenize(Example(i, messages=[{"role": "user", "content": f"Count to {i}"},
                                               {"role": "assistant", "content": " ".join(map(str, range(i)))}]))
        for i in range(1, 7)
    ]  # fmt: skip
    with torch.no_grad():
        reference = sum(
            model(input_ids=torch.tensor([e.input_ids]), labels=torch.tensor([e.labels])).loss.item()
            * (e.loss_tokens - 0)
            for e in examples
        ) / sum(e.loss_tokens for e in examples)
        rows = pack_rows([len(e) for e in examples], range(len(examples)), max_len=96)
        assert any(len(row) > 1 for row in rows)
        batch = collate(examples, rows, tokenizer.pad_token_id, packing=True)
        hidden = model.model(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False)[0]
        packed = completion_loss(hidden, batch.labels, model.lm_head, model.config).item() / batch.loss_tokens
        unfused = completion_loss(hidden, batch.labels, torch.nn.Sequential(model.lm_head), model.config).item()
    assert packed == pytest.approx(reference, rel=1e-4)
    assert unfused / batch.loss_tokens == pytest.approx(packed, rel=1e-5)


def test_fused_cross_entropy_gradients_match_autograd() -> None:
    from bigmodel_training.loss import _FusedLinearCrossEntropy

    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    fused = _FusedLinearCrossEntropy.apply(hidden, weight, targets, 8)
    fused.backward()
    assert hidden.grad is not None
    assert weight.grad is not None
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    reference = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="sum")
    reference.backward()
    assert fused.item() == pytest.approx(reference.item(), rel=1e-10)
    assert torch.allclose(grads[0], hidden.grad)  # type: ignore[arg-type]
    assert torch.allclose(grads[1], weight.grad)  # type: ignore[arg-type]
