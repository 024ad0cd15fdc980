"""Monte Carlo of the canary rule (bigmodel_serving.canary_rule): thousands of simulated canaries.

Each simulated canary is a stream of requests; every request goes to the candidate with probability
`weight` (the per-request split; a per-key split over many keys behaves the same), fails with the
version's error rate, otherwise answers with a latency drawn from a heavy-tailed mixture (log-normal,
sigma 0.5, and 5 % of answers 5x slower) and is rated with probability `rated` (bad with the version's
bad-answer rate). After *every* request the rule's own code (`canary_rule.verdicts`, on numpy arrays)
says rollback, promote or nothing; the first of rollback / promote ends the canary. What is counted:
the share of canaries rolled back, promoted, and still undecided after `horizon` requests, and the
candidate requests a decision took.

    .venv/bin/python tests/devtools/canary_montecarlo.py      # prints the table of docs/loop.md
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from bigmodel_serving.canary_rule import SIGNALS, RuleSettings, verdicts

LATENCY_SIGMA = 0.5
SLOW_SHARE, SLOW_FACTOR = 0.05, 5.0
CHUNK = 250  # canaries simulated at once (memory: CHUNK x horizon per array)
TRIALS = 2000  # canaries per scenario, in the table and in the unit test
WITHIN_CANDIDATE_REQUESTS = 1000  # the stated number: a worse candidate is rolled back within this many


@dataclass(frozen=True)
class Scenario:
    name: str
    base_error: float
    error_increase: float = 0.0
    latency_ratio: float = 1.0
    bad_answers: float = 0.15  # stable's bad-answer rate among rated answers
    bad_increase: float = 0.0
    rated: float = 0.2  # share of answered requests that get a rating
    weight: float = 0.2
    horizon: int = 10_000  # requests (both versions)


@dataclass
class Outcome:
    scenario: Scenario
    trials: int = 0
    rolled_back: int = 0
    promoted: int = 0
    rollback_requests: list[int] = field(default_factory=list)  # candidate requests at the rollback
    promotion_requests: list[int] = field(default_factory=list)
    causes: dict[str, int] = field(default_factory=dict)  # which signal(s) rolled back

    @property
    def undecided(self) -> int:
        return self.trials - self.rolled_back - self.promoted

    def share(self, count: int) -> float:
        return count / self.trials if self.trials else 0.0

    @staticmethod
    def quantile(values: list[int], q: float) -> int | None:
        if not values:
            return None
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


def simulate(scenario: Scenario, settings: RuleSettings, trials: int, seed: int) -> Outcome:
    import numpy as np

    rng = np.random.default_rng(seed)
    out = Outcome(scenario)
    horizon = scenario.horizon
    for start in range(0, trials, CHUNK):
        m = min(CHUNK, trials - start)
        arm = rng.random((m, horizon)) < scenario.weight
        error_rate = np.where(arm, scenario.base_error + scenario.error_increase, scenario.base_error)
        failed = rng.random((m, horizon)) < error_rate
        answered = ~failed
        log_latency = rng.normal(0.0, LATENCY_SIGMA, (m, horizon))
        log_latency += np.where(rng.random((m, horizon)) < SLOW_SHARE, math.log(SLOW_FACTOR), 0.0)
        log_latency += np.where(arm, math.log(scenario.latency_ratio), 0.0)
        rated = answered & (rng.random((m, horizon)) < scenario.rated)
        bad_rate = np.where(arm, scenario.bad_answers + scenario.bad_increase, scenario.bad_answers)
        bad = rated & (rng.random((m, horizon)) < bad_rate)

        def moments(mask: Any, values: Any) -> tuple[Any, Any, Any]:
            return (
                np.cumsum(mask, axis=1, dtype=np.int32),
                np.cumsum(np.where(mask, values, 0.0), axis=1),
                np.cumsum(np.where(mask, values * values, 0.0), axis=1),
            )

        sides = {}
        for side, mask in (("candidate", arm), ("stable", ~arm)):
            errors = moments(mask, failed.astype(np.float64))
            latency = moments(mask & answered, log_latency)
            quality = moments(mask & rated, bad.astype(np.float64))
            sides[side] = {"errors": errors, "latency": latency, "quality": quality}
        rollback, promote, per = verdicts(settings, sides["candidate"], sides["stable"], np)
        never = horizon + 1
        first_rollback = np.where(rollback.any(axis=1), rollback.argmax(axis=1), never)
        first_promote = np.where(promote.any(axis=1), promote.argmax(axis=1), never)
        candidate_requests = sides["candidate"]["errors"][0]
        for i in range(m):
            t_rb, t_pr = int(first_rollback[i]), int(first_promote[i])
            if t_rb < never and t_rb <= t_pr:
                out.rolled_back += 1
                out.rollback_requests.append(int(candidate_requests[i, t_rb]))
                cause = "+".join(s for s in SIGNALS if s in per and bool(per[s][2][i, t_rb]))
                out.causes[cause] = out.causes.get(cause, 0) + 1
            elif t_pr < never:
                out.promoted += 1
                out.promotion_requests.append(int(candidate_requests[i, t_pr]))
        out.trials += m
    return out


def upper_bound(successes: int, trials: int, z: float = 3.29) -> float:
    """Wilson score upper bound (z 3.29: 99.9 % two-sided) of a share seen as successes / trials."""
    if trials == 0:
        return 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    spread = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return (centre + spread) / denominator


def lower_bound(successes: int, trials: int, z: float = 3.29) -> float:
    return 1.0 - upper_bound(trials - successes, trials, z)


SCENARIOS = (
    Scenario("as good as stable, base error 1 %", 0.01),
    Scenario("as good as stable, base error 2 %", 0.02),
    Scenario("as good as stable, base error 5 %", 0.05),
    Scenario("5 points more errors, base 1 %", 0.01, error_increase=0.05),
    Scenario("5 points more errors, base 2 %", 0.02, error_increase=0.05),
    Scenario("5 points more errors, base 5 %", 0.05, error_increase=0.05),
    Scenario("2x slower (time to first byte), base error 1 %", 0.01, latency_ratio=2.0),
    Scenario("30 points more bad ratings (200 OK), 20 % rated", 0.01, bad_increase=0.30),
)


def table(outcomes: list[Outcome]) -> str:
    rows = [
        "| candidate | canaries | rolled back | within 1,000 candidate requests | promoted "
        "| undecided at 10,000 requests | candidate requests to rollback (median / 90th pct) "
        "| to promotion (median / 90th pct) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for o in outcomes:

        def pair(values: list[int]) -> str:
            if not values:
                return "-"
            return f"{Outcome.quantile(values, 0.5)} / {Outcome.quantile(values, 0.9)}"

        in_time = sum(1 for n in o.rollback_requests if n <= WITHIN_CANDIDATE_REQUESTS)
        rows.append(
            f"| {o.scenario.name} | {o.trials:,} | {o.share(o.rolled_back):.1%} | {o.share(in_time):.1%} "
            f"| {o.share(o.promoted):.1%} "
            f"| {o.share(o.undecided):.1%} | {pair(o.rollback_requests)} | {pair(o.promotion_requests)} |"
        )
    return "\n".join(rows)


def main() -> None:
    import time

    settings = RuleSettings()
    outcomes = []
    for index, scenario in enumerate(SCENARIOS):
        started = time.monotonic()
        outcomes.append(simulate(scenario, settings, trials=TRIALS, seed=index + 1))
        print(f"{scenario.name}: {time.monotonic() - started:.1f} s, causes {outcomes[-1].causes}", flush=True)
    print(table(outcomes))


if __name__ == "__main__":
    main()
