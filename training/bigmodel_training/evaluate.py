"""The eval gate: what the trainer measures after training, and whether the adapter may get traffic.

1. Held-out loss: the same held-out examples (dataset.validation_split) through the base model (LoRA
   switched off with PEFT's `disable_adapter`, so no second copy of the weights is loaded) and the
   adapted model; token-mean loss and perplexity of each.
2. Optional eval set: a JSONL file of prompts with references. Both models answer each prompt
   greedily and a scorer judges the answer: `exact` (equal after trimming and collapsing
   whitespace), `contains` (the reference appears in the answer, case-insensitive), `json` (the
   answer parses as JSON), `regex` (the answer matches `pattern`, else the reference as a pattern).
3. The gate: adapted / base loss <= gate.max_loss_ratio (default 1.0) and, when gate.min_score is
   set, score >= min_score. Each check adds a line to `reasons`, passed or not.

The result goes into the FineTuneJob's status.evaluation (the operator promotes only on `passed`)
and into metrics.json.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bigmodel_training.config import EvaluationConfig, GateConfig
from bigmodel_training.dataset import DEFAULT_MAX_LINE_BYTES, Example, read_lines
from bigmodel_training.errors import DatasetError
from bigmodel_training.gate_comparison import Comparison

log = logging.getLogger(__name__)
REPORTED_DEFECTS = 20
PASSED, FAILED, NOT_COMPARED = "Passed", "Failed", "NotCompared"


@dataclass
class EvalItem:
    """One eval-set example: the conversation (or prompt) to answer, and the reference answer."""

    line: int
    example: Example  # the reference sits where training puts the target (last assistant turn / completion)
    reference: str


@dataclass
class GateResult:
    """The numbers and the verdict; `to_status()` is the FineTuneJob's status.evaluation."""

    base_loss: float | None = None
    adapted_loss: float | None = None
    held_out_examples: int = 0
    score: float | None = None
    base_score: float | None = None
    examples: int = 0
    scorer: str | None = None
    passed: bool = True
    reasons: list[str] = field(default_factory=list)
    outcome: str = PASSED  # Passed | Failed | NotCompared (no held-out data, or the incumbent not measured)
    incumbent: str | None = None  # the stable adapter compared with (None: the base model)
    comparisons: list[Comparison] = field(default_factory=list)
    incumbent_problem: str | None = None

    @property
    def loss_ratio(self) -> float | None:
        if self.base_loss is None or self.adapted_loss is None or self.base_loss <= 0:
            return None
        return self.adapted_loss / self.base_loss

    def to_status(self) -> dict[str, Any]:
        """camelCase, rounded, without empty fields."""
        status = {
            "baseLoss": _round(self.base_loss),
            "adaptedLoss": _round(self.adapted_loss),
            "basePerplexity": _round(_perplexity(self.base_loss), 3),
            "adaptedPerplexity": _round(_perplexity(self.adapted_loss), 3),
            "lossRatio": _round(self.loss_ratio),
            "heldOutExamples": self.held_out_examples or None,
            "score": _round(self.score),
            "baseScore": _round(self.base_score),
            "examples": self.examples or None,
            "scorer": self.scorer,
            "passed": self.passed,
            "outcome": self.outcome,
            "incumbent": self.incumbent or "base model",
            "comparisons": [c.to_status() for c in self.comparisons] or None,
            "reasons": list(self.reasons),
        }
        return {key: value for key, value in status.items() if value is not None}


def _perplexity(loss: float | None) -> float | None:
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 700.0))  # exp(700) is still a finite float


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


# ----------------------------------------------------------------------------------------------
# the eval set
# ----------------------------------------------------------------------------------------------


def load_eval_set(
    path: Path, train_format: str, max_examples: int, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> list[EvalItem]:
    """Parse the eval set; DatasetError lists every defective line (checked before training starts).

    A record is {"prompt": str, "reference": str} (also "completion" for the reference), or
    {"messages": [...]} whose last message is the assistant's reference answer. A prompt record is
    rendered the way training rendered its data: a user turn for chat and instruction data, the raw
    prompt for completion data.
    """
    items: list[EvalItem] = []
    defects: list[str] = []
    for number, raw in read_lines(path, max_line_bytes):
        if len(items) >= max_examples:
            break
        if raw is None:
            defects.append(f"line {number}: longer than {max_line_bytes} bytes")
            continue
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            defects.append(f"line {number}: not JSON ({exc})")
            continue
        item, problem = _eval_item(number, record, train_format)
        if problem:
            defects.append(f"line {number}: {problem}")
        elif item is not None:
            items.append(item)
    if defects:
        more = f"\n... and {len(defects) - REPORTED_DEFECTS} more" if len(defects) > REPORTED_DEFECTS else ""
        raise DatasetError(
            f"eval set {path}: {len(defects)} defect(s)\n" + "\n".join(defects[:REPORTED_DEFECTS]) + more
        )
    if not items:
        raise DatasetError(f"eval set {path}: no examples")
    return items


def _eval_item(number: int, record: Any, train_format: str) -> tuple[EvalItem | None, str | None]:
    if not isinstance(record, dict):
        return None, "expected a JSON object"
    messages = record.get("messages")
    if messages is not None:
        ok = isinstance(messages, list) and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages
        )
        if not ok or not messages:
            return None, "messages must be a non-empty list of {role, content} strings"
        if messages[-1]["role"] != "assistant" or len(messages) < 2:
            return None, "the last message must be the assistant's reference answer, after a prompt"
        turns = [{"role": m["role"], "content": m["content"]} for m in messages]
        return EvalItem(number, Example(number, messages=turns), turns[-1]["content"]), None
    prompt = record.get("prompt")
    reference = record.get("reference", record.get("completion"))
    if not isinstance(prompt, str) or not prompt or not isinstance(reference, str):
        return None, 'expected {"prompt": str, "reference": str} or {"messages": [...]}'
    if train_format == "completion":
        return EvalItem(number, Example(number, prompt=prompt, completion=reference), reference), None
    turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reference}]
    return EvalItem(number, Example(number, messages=turns), reference), None


def prompt_ids(renderer: Any, example: Example) -> list[int]:
    """The token ids training would put before the example's last target: what the model answers."""
    segments = renderer.segments(example)
    last = max(i for i, (_, trainable) in enumerate(segments) if trainable)
    uses_template = example.messages is not None and renderer.has_chat_template
    ids: list[int] = []
    if not uses_template and renderer.adds_bos and renderer.bos_id is not None:
        ids.append(renderer.bos_id)
    for text, _ in segments[:last]:
        ids.extend(renderer.tokenizer(text, add_special_tokens=False)["input_ids"])
    return ids


def _normal(text: str) -> str:
    return " ".join(text.split())


def passes(scorer: str, answer: str, reference: str, pattern: str | None = None) -> bool:
    """Whether one answer passes the scorer."""
    if scorer == "exact":
        return _normal(answer) == _normal(reference)
    if scorer == "contains":
        return _normal(reference).casefold() in _normal(answer).casefold()
    if scorer == "json":
        try:
            json.loads(answer)
        except ValueError:
            return False
        return True
    if scorer == "regex":
        try:
            return re.search(pattern or reference, answer, flags=re.DOTALL) is not None
        except re.error:
            return False  # a reference that is not a valid pattern cannot be matched
    raise ValueError(f"unknown scorer {scorer!r}")


# ----------------------------------------------------------------------------------------------
# the verdict (pure)
# ----------------------------------------------------------------------------------------------


def decide(result: GateResult, gate: GateConfig, *, base_comparable: bool = True) -> GateResult:
    """Fill in `passed` and `reasons` from the numbers and the thresholds."""
    reasons: list[str] = []
    passed = True
    if result.adapted_loss is not None and not math.isfinite(result.adapted_loss):
        passed = False
        reasons.append(f"adapted held-out loss is {result.adapted_loss}: training diverged")
    elif result.held_out_examples == 0 and result.score is None:
        if gate.require_held_out:
            passed = False
            result.outcome = NOT_COMPARED
            reasons.append(
                "no held-out data: dataset.validationSplit is 0 and no evaluation.datasetUri, so nothing was "
                "compared; not promoted (set one of them, or evaluation.gate.requireHeldOut: false)"
            )
        else:
            reasons.append("no held-out data: not compared (evaluation.gate.requireHeldOut is false)")
    elif result.held_out_examples == 0:
        reasons.append("no held-out examples (dataset.validationSplit is 0): held-out loss not compared")
    elif not base_comparable or result.loss_ratio is None:
        reasons.append("held-out loss not compared with the base model (full fine-tuning or no base loss)")
    else:
        ratio = result.loss_ratio
        ok = ratio <= gate.max_loss_ratio
        passed = passed and ok
        reasons.append(
            f"held-out loss {result.adapted_loss:.4f} vs base {result.base_loss:.4f} on {result.held_out_examples} "
            f"example(s): ratio {ratio:.3f} {'<=' if ok else '>'} maxLossRatio {gate.max_loss_ratio:g}"
            + ("" if ok else ": the adapter is worse than the base model")
        )
    if result.score is not None:
        versus = f" (base model {result.base_score:.3f})" if result.base_score is not None else ""
        if gate.min_score is None:
            reasons.append(f"eval set: score {result.score:.3f}{versus} on {result.examples} example(s), no minScore")
        else:
            ok = result.score >= gate.min_score
            passed = passed and ok
            reasons.append(
                f"eval set ({result.scorer}): score {result.score:.3f}{versus} on {result.examples} example(s) "
                f"{'>=' if ok else '<'} minScore {gate.min_score:g}"
            )
    if result.incumbent_problem is not None:
        passed = False
        result.outcome = NOT_COMPARED
        reasons.append(f"{result.incumbent_problem}; not promoted")
    for comparison in result.comparisons:
        ok = comparison.passed
        passed = passed and ok
        bound = f"maxLossRatio {gate.max_loss_ratio:g}" if comparison.metric == "heldOutLoss" else "no drop"
        reasons.append(
            f"{comparison.describe(result.incumbent or 'base model')} {'within' if ok else 'beyond'} {bound}"
            + ("" if ok else ": worse than the version it would replace")
        )
    result.passed = passed
    result.reasons = reasons
    if result.outcome != NOT_COMPARED:
        result.outcome = PASSED if passed else FAILED
    return result


# ----------------------------------------------------------------------------------------------
# running it (torch)
# ----------------------------------------------------------------------------------------------


def base_model_context(model: Any) -> contextlib.AbstractContextManager[Any] | None:
    """A context in which `model` computes as its base model (PEFT adapters off); None for full FT."""
    disable = getattr(model, "disable_adapter", None)
    return disable() if callable(disable) else None


def generate_answers(
    model: Any, tokenizer: Any, prompts: list[list[int]], max_new_tokens: int, runtime: Any
) -> list[str]:
    """Greedy answers, one prompt at a time (no padding to get wrong), special tokens dropped."""
    import torch

    answers = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for ids in prompts:
                input_ids = torch.tensor([ids], device=runtime.device)
                with runtime.autocast():
                    out = model.generate(
                        input_ids=input_ids,
                        attention_mask=torch.ones_like(input_ids),
                        max_new_tokens=max_new_tokens,
                        do_sample=False,
                        pad_token_id=tokenizer.pad_token_id,
                    )
                answers.append(str(tokenizer.decode(out[0, len(ids) :], skip_special_tokens=True)).strip())
    finally:
        model.train(was_training)
    return answers


def evaluate(
    trainer: Any,
    tokenizer: Any,
    items: list[EvalItem],
    config: EvaluationConfig,
    method_type: str,
    scratch: Path | None = None,
) -> GateResult:
    """Measure the adapted model, the base model and the incumbent (the stable adapter it would replace,
    gate_comparison.py) on the held-out split and the eval set, then decide."""
    from bigmodel_training.gate_comparison import (
        IncumbentLoaded,
        compare_losses,
        compare_scores,
        incumbent_dir,
        per_example_losses,
    )
    from bigmodel_training.render import Renderer

    model = trainer.model
    result = GateResult(held_out_examples=len(trainer.data.eval))
    comparable = method_type != "full"
    adapted_losses: list[tuple[float, int]] = []
    if trainer.data.eval:
        adapted_losses = per_example_losses(trainer)
        result.adapted_loss = _token_mean(adapted_losses)
        if comparable and (context := base_model_context(model)) is not None:
            with context:
                result.base_loss = _token_mean(per_example_losses(trainer))
    prompts: list[list[int]] = []
    adapted: list[str] = []
    if items:
        renderer = Renderer(tokenizer)
        prompts = [prompt_ids(renderer, item.example) for item in items]
        adapted = generate_answers(model, tokenizer, prompts, config.max_new_tokens, trainer.runtime)
        result.examples, result.scorer = len(items), config.scorer
        result.score = _share(config, items, adapted)
        if comparable and (context := base_model_context(model)) is not None:
            with context:
                base = generate_answers(model, tokenizer, prompts, config.max_new_tokens, trainer.runtime)
            result.base_score = _share(config, items, base)
        for item, answer in list(zip(items, adapted, strict=True))[:3]:
            log.info(
                "eval line %d: %r -> %r (reference %r)", item.line, item.example.texts()[-2:-1], answer, item.reference
            )
    incumbent = config.incumbent
    if incumbent is not None and comparable and (adapted_losses or items):
        result.incumbent = incumbent.name
        try:
            path = incumbent_dir(incumbent.uri, incumbent.local_path, scratch or Path("/tmp"))
            with IncumbentLoaded(model, path):
                if adapted_losses:
                    theirs = per_example_losses(trainer)
                    result.comparisons.append(compare_losses(adapted_losses, theirs, config.gate.max_loss_ratio))
                if items:
                    answers = generate_answers(model, tokenizer, prompts, config.max_new_tokens, trainer.runtime)
                    mine = [
                        passes(config.scorer, a, i.reference, config.pattern)
                        for a, i in zip(adapted, items, strict=True)
                    ]
                    their = [
                        passes(config.scorer, a, i.reference, config.pattern)
                        for a, i in zip(answers, items, strict=True)
                    ]
                    result.comparisons.append(compare_scores(mine, their))
        except Exception as error:  # not compared: fail closed (the canary would compare with the wrong version)
            log.warning("incumbent %s could not be measured: %r", incumbent.name, error)
            result.incumbent_problem = (
                f"the incumbent {incumbent.name} ({incumbent.uri}) could not be measured: {error}"
            )
    decide(result, config.gate, base_comparable=comparable)
    log.info("eval gate %s: %s", "passed" if result.passed else "FAILED", "; ".join(result.reasons))
    return result


def _token_mean(losses: list[tuple[float, int]]) -> float | None:
    tokens = sum(t for _, t in losses)
    return sum(loss for loss, _ in losses) / tokens if tokens else None


def _share(config: EvaluationConfig, items: list[EvalItem], answers: list[str]) -> float:
    good = sum(
        passes(config.scorer, answer, item.reference, config.pattern)
        for item, answer in zip(items, answers, strict=True)
    )
    return good / len(items)
