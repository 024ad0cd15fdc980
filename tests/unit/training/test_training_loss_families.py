"""Our chunked loss is the model's own objective, for every family the trainer accepts.

Each family is a tiny random config built here (no download). For each: the loss of
`completion_loss` over the decoder's hidden states equals `model(input_ids, labels=...).loss`
within 1e-3, on one example and on two examples packed into one row (position ids restarting),
and packed equals unpacked. Logit transforms are set to values that change the loss a lot, so a
loss that skipped them would fail.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from bigmodel_training.loss import LogitTransform, _FusedLinearCrossEntropy, completion_loss, objective_gap
from bigmodel_training.render import IGNORE_INDEX

VOCAB = 97
COMMON: dict[str, Any] = {
    "vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "max_position_embeddings": 256,
    "tie_word_embeddings": False, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
}  # fmt: skip
MOE = {"num_experts_per_tok": 2, "moe_intermediate_size": 48}
# model_type → extra config (logit transforms strong enough that skipping them shows).
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": {},
    "mistral": {"sliding_window": None},
    "qwen2": {},
    "qwen3": {},
    "phi3": {"pad_token_id": 0},
    "gemma": {},
    "gemma2": {"final_logit_softcapping": 0.5, "attn_logit_softcapping": 50.0, "query_pre_attn_scalar": 16},
    "gemma3_text": {"final_logit_softcapping": 0.5, "query_pre_attn_scalar": 16},
    "granite": {"logits_scaling": 0.125},
    "cohere": {"logit_scale": 8.0},
    "qwen2_moe": {**MOE, "num_experts": 4, "shared_expert_intermediate_size": 64},
    "qwen3_moe": {**MOE, "num_experts": 4, "output_router_logits": True},  # forward would add the aux loss
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2},
}
TRANSFORMED = {"gemma2", "gemma3_text", "granite", "cohere"}


def tiny_model(model_type: str) -> Any:
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type, **{**COMMON, **FAMILIES[model_type]})
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # larger logits than the default init, so that soft-capping matters
        model.get_output_embeddings().weight.mul_(20.0)
    return model.eval()


def example(length: int, prompt: int, seed: int) -> tuple[list[int], list[int]]:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (length,), generator=generator).tolist()
    labels = [IGNORE_INDEX] * prompt + ids[prompt:]
    return ids, labels


def our_sum(model: Any, ids: list[list[int]], labels: list[list[int]], positions: list[list[int]]) -> float:
    decoder, head = model.get_decoder(), model.get_output_embeddings()
    with torch.no_grad():
        hidden = decoder(input_ids=torch.tensor(ids), position_ids=torch.tensor(positions), use_cache=False)[0]
        return float(completion_loss(hidden, torch.tensor(labels), head, model.config))


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_loss_equals_the_models_own_and_packed_equals_unpacked(model_type: str) -> None:
    model = tiny_model(model_type)
    a, b = example(23, 7, seed=1), example(17, 5, seed=2)
    counts = [sum(1 for y in x[1][1:] if y != IGNORE_INDEX) for x in (a, b)]

    for (ids, labels), n in zip((a, b), counts, strict=True):
        ours, reference = objective_gap(model, ids, labels)
        assert ours == pytest.approx(reference, abs=1e-3, rel=1e-3), model_type
        assert our_sum(model, [ids], [labels], [list(range(len(ids)))]) / n == pytest.approx(ours, rel=1e-5)

    unpacked = sum(our_sum(model, [ids], [labels], [list(range(len(ids)))]) for ids, labels in (a, b))
    row_ids, row_labels = a[0] + b[0], a[1] + [IGNORE_INDEX] + b[1][1:]
    positions = list(range(len(a[0]))) + list(range(len(b[0])))
    packed = our_sum(model, [row_ids], [row_labels], [positions])
    assert packed / sum(counts) == pytest.approx(unpacked / sum(counts), abs=1e-3, rel=1e-3), model_type

    if model_type in TRANSFORMED:  # the test has teeth: the plain head's loss is far off
        with torch.no_grad():
            plain = completion_loss(
                model.get_decoder()(input_ids=torch.tensor([a[0]]), use_cache=False)[0],
                torch.tensor([a[1]]), torch.nn.Sequential(model.get_output_embeddings()), object(),
            )  # fmt: skip
        assert abs(float(plain) / counts[0] - objective_gap(model, *a)[1]) > 0.05


@pytest.mark.parametrize(("scale", "softcap"), [(1.0, None), (0.125, None), (8.0, None), (1.0, 0.7), (2.0, 3.0)])
def test_fused_gradients_match_autograd_with_transforms(scale: float, softcap: float | None) -> None:
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    fused = _FusedLinearCrossEntropy.apply(hidden, weight, targets, 8, scale, softcap)
    fused.backward()
    assert hidden.grad is not None and weight.grad is not None
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    logits = LogitTransform(scale, softcap).apply(hidden @ weight.t())
    reference = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    reference.backward()
    assert fused.item() == pytest.approx(reference.item(), rel=1e-10)
    assert torch.allclose(grads[0], hidden.grad)  # type: ignore[arg-type]
    assert torch.allclose(grads[1], weight.grad)  # type: ignore[arg-type]


def test_logit_transform_is_read_from_each_familys_config() -> None:
    from types import SimpleNamespace

    assert LogitTransform.of(SimpleNamespace()).identity
    assert LogitTransform.of(SimpleNamespace(logit_scale=0.0625)) == LogitTransform(0.0625, None)
    assert LogitTransform.of(SimpleNamespace(logits_scaling=8.0)) == LogitTransform(0.125, None)
    assert LogitTransform.of(SimpleNamespace(final_logit_softcapping=30.0)) == LogitTransform(1.0, 30.0)
    assert LogitTransform.of(SimpleNamespace(final_logit_softcapping=None)).identity


def test_a_logit_transform_the_trainer_does_not_know_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from bigmodel_training import loss
    from bigmodel_training.errors import UnsupportedError
    from bigmodel_training.modeling import Runtime, check_objective
    from bigmodel_training.render import Tokenized

    model = tiny_model("granite")
    ids, labels = example(20, 6, seed=3)
    runtime = Runtime(torch.device("cpu"), torch.float32, None)
    check_objective(model, Tokenized(ids, labels), runtime)  # known: passes
    monkeypatch.setattr(loss.LogitTransform, "of", classmethod(lambda cls, config: cls()))  # as if unknown
    with pytest.raises(UnsupportedError, match="differs from the model's own forward loss"):
        check_objective(model, Tokenized(ids, labels), runtime)


@pytest.mark.parametrize("model_type", ["qwen3_next", "jamba", "mamba", "granitemoehybrid"])
def test_recurrent_families_are_refused_by_the_trainer(model_type: str) -> None:
    from transformers import AutoConfig

    from bigmodel_training.modeling import family_problem

    problem = family_problem(AutoConfig.for_model(model_type))
    assert problem is not None and "packed example" in problem


@pytest.mark.parametrize("model_type", list(FAMILIES))
def test_accepted_families_pass_the_trainers_family_check(model_type: str) -> None:
    from transformers import AutoConfig

    from bigmodel_training.modeling import family_problem

    assert family_problem(AutoConfig.for_model(model_type, **{**COMMON, **FAMILIES[model_type]})) is None


def test_recurrent_families_are_refused_at_plan_time_with_their_own_reason() -> None:
    from bigmodel_operator.conditions import BLOCKING_PLAN_REASONS, Reason
    from bigmodel_operator.planning import PlanningError, lookup_gpu, parse_model_config, plan_training

    gpu = lookup_gpu("NVIDIA-H100-80GB-HBM3")
    shape = {
        "hidden_size": 2048, "num_hidden_layers": 48, "num_attention_heads": 16, "num_key_value_heads": 2,
        "head_dim": 256, "intermediate_size": 5120, "vocab_size": 151936,
    }  # fmt: skip
    with pytest.raises(PlanningError, match="not supported for fine-tuning") as caught:
        plan_training(parse_model_config({**shape, "model_type": "qwen3_next"}), gpu)
    assert caught.value.reason == Reason.UNSUPPORTED_MODEL_FAMILY
    assert Reason.UNSUPPORTED_MODEL_FAMILY in BLOCKING_PLAN_REASONS  # no Job is created
    for model_type in ("llama", "qwen3", "gemma2", "granite", "mixtral"):
        assert plan_training(parse_model_config({**shape, "model_type": model_type}), gpu).fits
