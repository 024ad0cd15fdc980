"""The eval gate's pure parts: scorers, the verdict and its reasons, the eval-set parser."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from pydantic import ValidationError

from bigmodel_training.config import EvaluationConfig, GateConfig
from bigmodel_training.errors import DatasetError
from bigmodel_training.evaluate import GateResult, decide, load_eval_set, passes


@pytest.mark.parametrize(
    ("scorer", "answer", "reference", "pattern", "expected"),
    [
        ("exact", "  Paris \n", "Paris", None, True),
        ("exact", "Paris.", "Paris", None, False),
        ("exact", "The  capital\nis Paris", "The capital is Paris", None, True),
        ("contains", "The capital is PARIS.", "paris", None, True),
        ("contains", "Berlin", "Paris", None, False),
        ("json", '{"city": "Paris"}', "", None, True),
        ("json", "{city: Paris}", "", None, False),
        ("regex", "order 12345 shipped", "", r"\d{5}", True),
        ("regex", "Paris", "^Par", None, True),
        ("regex", "Paris", "(", None, False),  # a reference that is no valid pattern never matches
    ],
)
def test_scorers(scorer: str, answer: str, reference: str, pattern: str | None, expected: bool) -> None:
    assert passes(scorer, answer, reference, pattern) is expected


def test_loss_ratio_within_the_threshold_passes_and_says_so() -> None:
    result = decide(GateResult(base_loss=4.0, adapted_loss=2.0, held_out_examples=5), GateConfig())
    assert result.passed
    assert result.reasons == ["held-out loss 2.0000 vs base 4.0000 on 5 example(s): ratio 0.500 <= maxLossRatio 1"]
    status = result.to_status()
    assert status["lossRatio"] == 0.5 and status["basePerplexity"] == pytest.approx(math.exp(4), abs=1e-3)


def test_a_worse_adapter_or_a_low_score_fails_with_every_reason() -> None:
    result = GateResult(base_loss=2.0, adapted_loss=2.5, held_out_examples=3, score=0.25, base_score=0.1, examples=8)
    result.scorer = "exact"
    decide(result, GateConfig(max_loss_ratio=1.1, min_score=0.5))
    assert not result.passed
    assert "ratio 1.250 > maxLossRatio 1.1: the adapter is worse than the base model" in result.reasons[0]
    assert result.reasons[1] == "eval set (exact): score 0.250 (base model 0.100) on 8 example(s) < minScore 0.5"


def test_diverged_training_fails_and_no_held_out_data_is_no_promotion_unless_opted_out() -> None:
    diverged = decide(GateResult(base_loss=2.0, adapted_loss=math.nan, held_out_examples=3), GateConfig())
    assert not diverged.passed and "training diverged" in diverged.reasons[0]
    assert diverged.to_status()["outcome"] == "Failed"
    assert "adaptedLoss" not in diverged.to_status()  # NaN is not valid JSON
    nothing = decide(GateResult(), GateConfig())
    assert not nothing.passed and nothing.outcome == "NotCompared" and "no held-out data" in nothing.reasons[0]
    assert "requireHeldOut: false" in nothing.reasons[0]
    opted_out = decide(GateResult(), GateConfig(require_held_out=False))
    assert opted_out.passed and opted_out.outcome == "Passed" and "requireHeldOut is false" in opted_out.reasons[0]
    scored = decide(GateResult(score=0.5, examples=10), GateConfig())  # an eval set is held-out data too
    assert scored.passed and scored.outcome == "Passed"


def test_eval_set_formats_and_defects(tmp_path: Path) -> None:
    good = tmp_path / "good.jsonl"
    good.write_text(
        '{"prompt": "Capital of France?", "reference": "Paris"}\n\n'
        '{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}\n'
        '{"prompt": "p", "completion": "c"}\n'
    )
    items = load_eval_set(good, "chat", max_examples=10)
    assert [(i.line, i.reference) for i in items] == [(1, "Paris"), (3, "Hello"), (4, "c")]
    assert items[0].example.messages == [
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris"},
    ]
    completion = load_eval_set(good, "completion", max_examples=1)
    assert len(completion) == 1 and completion[0].example.prompt == "Capital of France?"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('[1]\n{"prompt": 3, "reference": "x"}\n{"messages": []}\n')
    with pytest.raises(DatasetError) as refused:
        load_eval_set(bad, "chat", max_examples=10)
    text = str(refused.value)
    assert "3 defect(s)" in text and "line 1: expected a JSON object" in text and "line 3: messages must be" in text


def test_config_refuses_a_bad_pattern_and_a_score_threshold_without_an_eval_set() -> None:
    with pytest.raises(ValidationError, match="not a valid regular expression"):
        EvaluationConfig(pattern="(")
    with pytest.raises(ValidationError, match=r"min_score needs evaluation\.dataset_uri"):
        EvaluationConfig(gate=GateConfig(min_score=0.5))
