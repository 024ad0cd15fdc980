"""The canary's decision rule: a sequential test per signal whose error rates are known (pure).

Three signals compare the candidate with the stable version; each is the difference of a mean,
candidate minus stable:

    errors    share of requests that failed (5xx or an engine error), one 0/1 per request
    latency   log of the time to the first answer byte of a successful request
    quality   share of rated answers that were bad (rating 1-2, or a correction), one 0/1 per rating

For each signal the rule keeps a confidence sequence for the difference: an interval that holds the
true difference at *every* request of the canary at once with probability 1 - a (Robbins' normal
mixture with a plug-in variance, the "always valid" bound of Johari et al. 2017 / Howard et al. 2021).
Looking after every request is therefore allowed: this is what replaces the old threshold that was
checked after every request from 20 to 200 and rolled back a third of equal candidates.

    roll back   when any signal shows the candidate worse: the lower bound above the tolerance
                (errors, quality: 0, i.e. any increase; latency: log maxLatencyRatio)
    promote     when every required signal shows it within its margin: the upper bound below
                maxErrorRateIncrease, log maxLatencyRatio (and maxBadAnswerIncrease when quality is
                required)

With `false_rollback_rate` a split evenly over the k judged signals (a / k each, one-sided), a
candidate as good as stable is rolled back with probability at most a (union bound), and a candidate
worse than a margin is promoted on that signal with probability at most a / k. The Monte Carlo in
tests/unit/serving/test_serving_canary_rule.py measures both, and how many requests a rollback takes
(docs/loop.md, "Canary": the table).

The arithmetic takes plain numbers in the ingress and numpy arrays in the Monte Carlo (`ops`): the
same code decides both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

Signal = Literal["errors", "latency", "quality"]
SIGNALS: tuple[Signal, ...] = ("errors", "latency", "quality")
QualityRole = Literal["off", "guard", "required"]

# Mixing scale of each signal's confidence sequence: it is tightest for differences near this size.
TAU = {"errors": 0.05, "latency": 0.5, "quality": 0.1}
SMOOTHING = 0.5  # pseudo-observations per arm in a share's variance (no zero variance from 0 errors)
LATENCY_VARIANCE_FLOOR = 0.01  # of log latency: identical latencies still carry some noise
BAD_RATING = 2  # a rating at or below this is a bad answer (as is any correction)

SCALAR = SimpleNamespace(sqrt=math.sqrt, log=math.log, maximum=max)


@dataclass
class Moments:
    """Count, sum and sum of squares of one signal's observations on one version."""

    n: int = 0
    total: float = 0.0
    squares: float = 0.0

    def add(self, value: float) -> None:
        self.n += 1
        self.total += value
        self.squares += value * value

    def dump(self) -> list[float]:
        return [self.n, self.total, self.squares]

    @classmethod
    def load(cls, raw: Any) -> Moments:
        if isinstance(raw, list | tuple) and len(raw) == 3 and all(isinstance(v, int | float) for v in raw):
            n, total, squares = raw
            if n >= 0 and not isinstance(n, bool):
                return cls(int(n), float(total), float(squares))
        return cls()


@dataclass
class ArmStats:
    """One version's observations in a canary."""

    errors: Moments = field(default_factory=Moments)  # 1 per failed request, 0 per answered one
    latency: Moments = field(default_factory=Moments)  # log seconds to the first byte, answered requests
    quality: Moments = field(default_factory=Moments)  # 1 per bad rating, 0 per good one

    def record(self, error: bool, latency_s: float | None) -> None:
        self.errors.add(1.0 if error else 0.0)
        if not error and latency_s is not None:
            self.latency.add(math.log(max(latency_s, 1e-6)))

    def of(self, signal: Signal) -> Moments:
        moments: Moments = getattr(self, signal)
        return moments

    def dump(self) -> dict[str, list[float]]:
        return {"errors": self.errors.dump(), "latency": self.latency.dump()}

    @classmethod
    def load(cls, raw: Any) -> ArmStats:
        raw = raw if isinstance(raw, dict) else {}
        return cls(errors=Moments.load(raw.get("errors")), latency=Moments.load(raw.get("latency")))


def is_bad(rating: int, correction: bool) -> bool:
    """A rated answer counts against its version when rated 1-2 or corrected."""
    return rating <= BAD_RATING or correction


@dataclass(frozen=True)
class RuleSettings:
    """The rule's parameters (AdapterRoute fields of the same names)."""

    false_rollback_rate: float = 0.05
    min_requests: int = 20
    max_error_rate_increase: float = 0.02
    max_latency_ratio: float = 1.5
    max_bad_answer_increase: float = 0.1
    quality: QualityRole = "required"

    def judged(self) -> tuple[Signal, ...]:
        return SIGNALS if self.quality != "off" else ("errors", "latency")

    def alpha(self) -> float:
        """Each signal's one-sided error rate: the total split evenly."""
        return self.false_rollback_rate / len(self.judged())

    def tolerance(self, signal: Signal) -> float:
        """Roll back once the lower bound of the difference exceeds this."""
        return math.log(self.max_latency_ratio) if signal == "latency" else 0.0

    def margin(self, signal: Signal) -> float:
        """A signal passes once the upper bound of the difference is below this."""
        if signal == "errors":
            return self.max_error_rate_increase
        if signal == "latency":
            return math.log(self.max_latency_ratio)
        return self.max_bad_answer_increase

    def required(self) -> tuple[Signal, ...]:
        return SIGNALS if self.quality == "required" else ("errors", "latency")


# --------------------------------------------------------------------------------------------
# the arithmetic (numbers or numpy arrays)
# --------------------------------------------------------------------------------------------


def half_width(variance: Any, alpha: float, tau: float, ops: Any = SCALAR) -> Any:
    """Half width of the level-(1 - alpha) normal-mixture confidence sequence for a difference whose
    estimate has `variance`: it misses the true difference, on either side, at any time of the canary,
    with probability at most alpha."""
    tau2 = tau * tau
    return ops.sqrt(variance * (variance + tau2) / tau2 * ops.log((variance + tau2) / (variance * alpha * alpha)))


def share_difference(
    n_c: Any, x_c: Any, n_s: Any, x_s: Any, alpha: float, tau: float, ops: Any = SCALAR
) -> tuple[Any, Any]:
    """(difference of the shares, half width): `x` ones out of `n` on each side."""
    nc, ns = ops.maximum(n_c, 1), ops.maximum(n_s, 1)
    pc = (x_c + SMOOTHING) / (n_c + 2 * SMOOTHING)
    ps = (x_s + SMOOTHING) / (n_s + 2 * SMOOTHING)
    variance = pc * (1 - pc) / nc + ps * (1 - ps) / ns
    return x_c / nc - x_s / ns, half_width(variance, alpha, tau, ops)


def mean_difference(
    n_c: Any, s_c: Any, q_c: Any, n_s: Any, s_s: Any, q_s: Any, alpha: float, tau: float, ops: Any = SCALAR
) -> tuple[Any, Any]:
    """(difference of the means, half width) from counts, sums and sums of squares."""
    nc, ns = ops.maximum(n_c, 1), ops.maximum(n_s, 1)
    mc, ms = s_c / nc, s_s / ns
    vc = ops.maximum(q_c / nc - mc * mc, 0.0) * nc / ops.maximum(nc - 1, 1) + LATENCY_VARIANCE_FLOOR
    vs = ops.maximum(q_s / ns - ms * ms, 0.0) * ns / ops.maximum(ns - 1, 1) + LATENCY_VARIANCE_FLOOR
    return mc - ms, half_width(vc / nc + vs / ns, alpha, tau, ops)


def bounds(
    signal: Signal, candidate: tuple[Any, Any, Any], stable: tuple[Any, Any, Any], alpha: float, ops: Any = SCALAR
) -> tuple[Any, Any]:
    """(difference, half width) of one signal from (n, sum, sum of squares) of each side."""
    n_c, s_c, q_c = candidate
    n_s, s_s, q_s = stable
    if signal == "latency":
        return mean_difference(n_c, s_c, q_c, n_s, s_s, q_s, alpha, TAU[signal], ops)
    return share_difference(n_c, s_c, n_s, s_s, alpha, TAU[signal], ops)


def verdicts(
    settings: RuleSettings,
    candidate: dict[Signal, tuple[Any, Any, Any]],
    stable: dict[Signal, tuple[Any, Any, Any]],
    ops: Any = SCALAR,
) -> tuple[Any, Any, dict[Signal, tuple[Any, Any, Any, Any]]]:
    """(rollback, promote, per signal (difference, half width, worse, within)) for numbers or arrays;
    a rollback wins over a promotion that holds at the same time."""
    alpha = settings.alpha()
    per: dict[Signal, tuple[Any, Any, Any, Any]] = {}
    rollback: Any = False
    promote: Any = True
    for signal in settings.judged():
        enough = (candidate[signal][0] >= settings.min_requests) & (stable[signal][0] >= settings.min_requests)
        difference, width = bounds(signal, candidate[signal], stable[signal], alpha, ops)
        worse = enough & (difference - width > settings.tolerance(signal))
        within = enough & (difference + width < settings.margin(signal))
        per[signal] = (difference, width, worse, within)
        rollback = rollback | worse
        if signal in settings.required():
            promote = promote & within
    return rollback, promote, per


# --------------------------------------------------------------------------------------------
# one canary's decision, with the numbers in words
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    decision: Literal["promoted", "rolled_back"]
    reason: str


def _moments(arm: ArmStats) -> dict[Signal, tuple[Any, Any, Any]]:
    return {s: (arm.of(s).n, arm.of(s).total, arm.of(s).squares) for s in SIGNALS}


def decide(settings: RuleSettings, candidate: ArmStats, stable: ArmStats) -> Decision | None:
    """The automatic decision for a canary now, or None while the evidence is not enough."""
    rollback, promote, per = verdicts(settings, _moments(candidate), _moments(stable))
    if rollback:
        worse = [s for s, (_, _, bad, _) in per.items() if bad]
        return Decision("rolled_back", "; ".join(describe(s, settings, candidate, stable, per[s]) for s in worse))
    if promote:
        required = [s for s in settings.required() if s in per]
        return Decision("promoted", "; ".join(describe(s, settings, candidate, stable, per[s]) for s in required))
    return None


def describe(
    signal: Signal,
    settings: RuleSettings,
    candidate: ArmStats,
    stable: ArmStats,
    numbers: tuple[Any, Any, Any, Any],
) -> str:
    """One signal's evidence in words, e.g. "error rate 6.1% vs stable 1.0% over 412/1650 requests:
    +5.1 points, 97.5% bound [+2.3, +7.9], worse than stable"."""
    difference, width, worse, within = numbers
    c, s = candidate.of(signal), stable.of(signal)
    level = f"{(1 - settings.alpha()) * 100:.4g}%"
    verdict = "worse than stable" if worse else ("within the margin" if within else "undecided")
    if signal == "latency":
        ratio = math.exp(difference)
        low, high = math.exp(difference - width), math.exp(difference + width)
        return (
            f"latency {ratio:.2f}x stable (geometric mean of time to first byte) over {c.n}/{s.n} answers, "
            f"{level} bound [{low:.2f}x, {high:.2f}x] vs maxLatencyRatio {settings.max_latency_ratio:g}: {verdict}"
        )
    name = "error rate" if signal == "errors" else "bad-answer rate"
    unit = "requests" if signal == "errors" else "ratings"
    margin = settings.margin(signal)
    # Two shares differ by at most 100 points: the printed bound is clipped there (the decision is not).
    low, high = max(difference - width, -1.0), min(difference + width, 1.0)
    return (
        f"{name} {_share(c):.1%} vs stable {_share(s):.1%} over {c.n}/{s.n} {unit}: "
        f"{difference * 100:+.1f} points, {level} bound [{low * 100:+.1f}, "
        f"{high * 100:+.1f}] vs margin {margin * 100:g}: {verdict}"
    )


def _share(moments: Moments) -> float:
    return moments.total / moments.n if moments.n else 0.0
