"""The canary rule's error rates, measured: a Monte Carlo of thousands of simulated canaries (fixed seeds).

The rule's own arithmetic decides every simulated canary (`canary_rule.verdicts` on numpy arrays,
checked after every request); tests/devtools/canary_montecarlo.py describes the simulation and prints
the table of docs/loop.md ("Canary").

How many, which seeds, and why a pass is not luck:
- TRIALS = 2,000 simulated canaries per scenario; numpy seeds 11, 12, 13 (as good as stable at base
  error 1, 2, 5 %), 21, 22, 23 (5 points worse at the same bases), 31 (bad answers, 200 OK).
- A rate is asserted through its Wilson score bound at z = 3.29 (99.9 % two-sided), never through the
  point estimate. With 2,000 canaries "false rollback <= 5 %" passes only if at most 67 canaries
  (3.35 %) were rolled back: were the true rate 5 %, that happens with probability 0.02 % (binomial).
  "Rolled back within 1,000 candidate requests >= 90 %" passes only if at least 1,845 (92.25 %) were:
  were the true rate 90 %, probability 0.03 %. So a pass says the rate holds, whatever the seed.
- The other way (a flaky test): the measured rates are far from those lines (false rollback <= 0.35 %,
  rolled back in time >= 96.9 %); were those the true rates, another seed would fail with probability
  below 1e-20.
"""

from __future__ import annotations

import math
import random

import pytest
from canary_montecarlo import (
    TRIALS,
    WITHIN_CANDIDATE_REQUESTS,
    Outcome,
    Scenario,
    lower_bound,
    simulate,
    upper_bound,
)

from bigmodel_serving.canary_rule import (
    SIGNALS,
    ArmStats,
    RuleSettings,
    decide,
    describe,
    half_width,
    is_bad,
    verdicts,
)

HORIZON_EQUAL = 10_000  # requests (2,000 on the candidate at weight 20 %)
HORIZON_WORSE = 5_000  # the stated number: 1,000 candidate requests at weight 20 %

np = pytest.importorskip("numpy")


@pytest.mark.parametrize(("base", "seed"), [(0.01, 11), (0.02, 12), (0.05, 13)])
def test_false_rollback_is_at_most_5_percent_when_the_candidate_is_as_good(base: float, seed: int) -> None:
    scenario = Scenario(f"equal {base}", base, horizon=HORIZON_EQUAL)
    outcome = simulate(scenario, RuleSettings(), TRIALS, seed)
    bound = upper_bound(outcome.rolled_back, outcome.trials)
    print(f"\nbase {base:.0%}: rolled back {outcome.share(outcome.rolled_back):.2%} (99.9 % bound {bound:.2%}), "
          f"promoted {outcome.share(outcome.promoted):.1%}, causes {outcome.causes}")  # fmt: skip
    assert outcome.trials == TRIALS
    assert bound <= 0.05


@pytest.mark.parametrize(("base", "seed"), [(0.01, 21), (0.02, 22), (0.05, 23)])
def test_a_candidate_5_points_worse_is_rolled_back_within_1000_candidate_requests(base: float, seed: int) -> None:
    scenario = Scenario(f"worse {base}", base, error_increase=0.05, horizon=HORIZON_WORSE)
    outcome = simulate(scenario, RuleSettings(), TRIALS, seed)
    in_time = sum(1 for n in outcome.rollback_requests if n <= WITHIN_CANDIDATE_REQUESTS)
    bound = lower_bound(in_time, outcome.trials)
    print(f"\nbase {base:.0%} +5 points: rolled back {outcome.share(in_time):.2%} within "
          f"{WITHIN_CANDIDATE_REQUESTS} candidate requests (99.9 % bound {bound:.2%}), promoted "
          f"{outcome.share(outcome.promoted):.2%}, 90th pct {Outcome.quantile(outcome.rollback_requests, 0.9)}")  # fmt: skip
    assert bound >= 0.90
    assert upper_bound(outcome.promoted, outcome.trials) <= RuleSettings().alpha()  # a missed regression


def test_quality_alone_rolls_back_a_candidate_that_answers_200_with_bad_answers() -> None:
    """Errors and latency equal; 30 points more bad ratings among the 20 % of answers rated."""
    scenario = Scenario("bad answers", 0.01, bad_increase=0.30, horizon=HORIZON_WORSE)
    outcome = simulate(scenario, RuleSettings(), TRIALS, 31)
    by_quality = outcome.causes.get("quality", 0)  # rolled back by the quality signal and no other
    print(f"\nbad answers: rolled back by quality alone {outcome.share(by_quality):.2%} "
          f"(99.9 % bound {lower_bound(by_quality, outcome.trials):.2%}), causes {outcome.causes}")  # fmt: skip
    assert lower_bound(by_quality, outcome.trials) >= 0.90
    assert upper_bound(outcome.promoted, outcome.trials) <= RuleSettings().alpha()


# ---- the arithmetic, on plain numbers ----


def test_the_scalar_and_the_array_paths_decide_alike() -> None:
    """The ingress decides with numbers, the Monte Carlo with arrays: the same function, the same answers."""
    rng = random.Random(5)
    settings = RuleSettings()
    for _ in range(200):
        candidate, stable = ArmStats(), ArmStats()
        for arm, error_rate in ((candidate, rng.choice([0.0, 0.02, 0.3])), (stable, 0.02)):
            for _ in range(rng.randint(0, 400)):
                arm.record(rng.random() < error_rate, rng.lognormvariate(0, 0.5))
            for _ in range(rng.randint(0, 60)):
                arm.quality.add(float(rng.random() < 0.2))
        moments = [{s: (a.of(s).n, a.of(s).total, a.of(s).squares) for s in SIGNALS} for a in (candidate, stable)]
        scalar = verdicts(settings, *moments)
        arrays = verdicts(
            settings,
            *[{s: tuple(np.array([v]) for v in value) for s, value in m.items()} for m in moments],
            np,
        )
        assert bool(scalar[0]) == bool(arrays[0][0]) and bool(scalar[1]) == bool(arrays[1][0])


def test_nothing_is_decided_before_min_requests() -> None:
    candidate, stable = ArmStats(), ArmStats()
    for _ in range(19):
        candidate.record(True, None)
    for _ in range(500):
        stable.record(False, 0.1)
    assert decide(RuleSettings(quality="off"), candidate, stable) is None
    candidate.record(True, None)
    verdict = decide(RuleSettings(quality="off"), candidate, stable)
    assert verdict is not None and verdict.decision == "rolled_back"
    assert verdict.reason.startswith("error rate 100.0% vs stable 0.0% over 20/500 requests")


def test_promotion_needs_every_required_signal() -> None:
    candidate, stable = ArmStats(), ArmStats()
    for arm in (candidate, stable):
        for _ in range(3000):
            arm.record(False, 0.1)
    assert decide(RuleSettings(quality="required"), candidate, stable) is None  # no ratings yet
    promoted = decide(RuleSettings(quality="guard"), candidate, stable)
    assert promoted is not None and promoted.decision == "promoted"
    assert "within the margin" in promoted.reason and "latency 1.00x" in promoted.reason
    for arm in (candidate, stable):
        for index in range(1500):
            arm.quality.add(float(index % 10 == 0))
    assert (decide(RuleSettings(quality="required"), candidate, stable) or promoted).decision == "promoted"


def test_a_slower_candidate_is_rolled_back_by_latency_alone() -> None:
    candidate, stable = ArmStats(), ArmStats()
    rng = random.Random(3)
    for _ in range(200):
        candidate.record(False, 0.3 * rng.lognormvariate(0, 0.2))
    for _ in range(800):
        stable.record(False, 0.1 * rng.lognormvariate(0, 0.2))
    verdict = decide(RuleSettings(quality="off"), candidate, stable)
    assert verdict is not None and verdict.decision == "rolled_back" and verdict.reason.startswith("latency 3.")


def test_bad_answers_and_the_bound() -> None:
    assert is_bad(1, False) and is_bad(2, False) and not is_bad(3, False) and is_bad(5, True)
    assert half_width(1e-4, 0.0167, 0.05) > 0.02  # a wide bound at little evidence ...
    assert half_width(1e-6, 0.0167, 0.05) < 0.005  # ... and a narrow one at much
    assert math.isfinite(half_width(1e-12, 0.0167, 0.05))


def test_reasons_carry_the_numbers() -> None:
    candidate, stable = ArmStats(), ArmStats()
    for index in range(100):
        candidate.record(False, 0.2)
        candidate.quality.add(float(index < 60))
    for index in range(400):
        stable.record(False, 0.2)
        stable.quality.add(float(index < 40))
    settings = RuleSettings()
    verdict = decide(settings, candidate, stable)
    assert verdict is not None and verdict.decision == "rolled_back"
    assert verdict.reason.startswith("bad-answer rate 60.0% vs stable 10.0% over 100/400 ratings: +50.0 points")
    _, _, per = verdicts(
        settings,
        *[{s: (a.of(s).n, a.of(s).total, a.of(s).squares) for s in SIGNALS} for a in (candidate, stable)],
    )
    assert "undecided" in describe("errors", settings, candidate, stable, per["errors"])


def test_the_printed_bound_of_a_share_difference_stays_within_100_points() -> None:
    """Few requests make the bound wider than two shares can differ: the reason prints it clipped at ±100."""
    candidate, stable = ArmStats(), ArmStats()
    for index in range(5):
        candidate.record(index < 4, 0.2)
    for _ in range(5):
        stable.record(False, 0.2)
    settings = RuleSettings()
    _, _, per = verdicts(
        settings,
        *[{s: (a.of(s).n, a.of(s).total, a.of(s).squares) for s in SIGNALS} for a in (candidate, stable)],
    )
    difference, width, _, _ = per["errors"]
    assert difference + width > 1.0  # the raw bound is wider than a share can be
    text = describe("errors", settings, candidate, stable, per["errors"])
    low, high = (float(part.strip()) for part in text.split(" bound [")[1].split("]")[0].split(","))
    assert -100.0 <= low <= high <= 100.0
