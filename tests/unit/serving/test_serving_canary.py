"""Canary routes without Ray: the sticky split, the decision rule, the shared book, the replica's router."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bigmodel_serving.args import AdapterRoute, IngressConfig, InvalidServeArgsError, parse_ingress_config
from bigmodel_serving.canary import (
    CanaryActor,
    CanaryBook,
    CanaryRouter,
    Choice,
    Opened,
    VersionSignals,
    judge,
    key_share,
    mean_rating,
    picks_candidate,
)
from bigmodel_serving.errors import APIError

BASE = "tiny"
KEYS = [f"key-{index:03d}" for index in range(500)]  # fixed names: the split is deterministic


def _route(**fields: Any) -> AdapterRoute:
    values: dict[str, Any] = {"name": "bot", "stable": "bot.v1", "candidate": "bot.v2", "weight": 0.2}
    values.update(fields)
    return AdapterRoute.model_validate(values)


def _signals(version: str, requests: int, errors: int = 0, latency: float = 0.1) -> VersionSignals:
    signals = VersionSignals(version)
    for index in range(requests):
        signals.record(index < errors, latency)
    return signals


class _Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


# ---- the split ----


def test_split_is_within_five_points_of_the_weight_over_500_keys() -> None:
    chosen = [key for key in KEYS if picks_candidate(key, "bot", "bot.v2", 0.2)]
    assert 0.15 <= len(chosen) / len(KEYS) <= 0.25
    assert all(0.0 <= key_share(key, "bot", "bot.v2") < 1.0 for key in KEYS)


def test_split_is_sticky_and_a_higher_weight_only_moves_keys_to_the_candidate() -> None:
    at_20 = {key for key in KEYS if picks_candidate(key, "bot", "bot.v2", 0.2)}
    again = {key for key in KEYS if picks_candidate(key, "bot", "bot.v2", 0.2)}
    at_50 = {key for key in KEYS if picks_candidate(key, "bot", "bot.v2", 0.5)}
    assert at_20 == again
    assert at_20 < at_50
    assert not any(picks_candidate(key, "bot", "bot.v2", 0.0) for key in KEYS)
    assert all(picks_candidate(key, "bot", "bot.v2", 1.0) for key in KEYS)
    assert not any(picks_candidate(key, "bot", None, 1.0) for key in KEYS)
    # A new candidate draws afresh: not the same keys every time.
    assert at_20 != {key for key in KEYS if picks_candidate(key, "bot", "bot.v3", 0.2)}


def test_router_chooses_engine_names_and_a_stable_fallback() -> None:
    router = CanaryRouter("app", BASE)
    router.configure([_route(weight=0.5), _route(name="first", stable=None, candidate="bot.v1", weight=1.0)])
    assert router.model_ids() == ["tiny:bot", "tiny:first"]
    assert router.choose("tiny:lora", "alice") is None
    choices = [router.choose("tiny:bot", key) for key in KEYS]
    assert {choice.engine_model for choice in choices if choice} == {"tiny:bot.v1", "tiny:bot.v2"}
    candidate = next(choice for choice in choices if choice and choice.role == "candidate")
    assert candidate.fallback is not None and candidate.fallback.engine_model == "tiny:bot.v1"
    first = router.choose("tiny:first", "alice")
    assert first is not None and first.engine_model == "tiny:bot.v1" and first.fallback is not None
    assert first.fallback.engine_model == BASE  # stable null is the base model


def test_manual_modes_apply_locally_at_once() -> None:
    router = CanaryRouter("app", BASE)
    roles = lambda: {choice.role for key in KEYS if (choice := router.choose("tiny:bot", key))}  # noqa: E731
    router.configure([_route(mode="promote")])
    assert roles() == {"candidate"}
    router.configure([_route(mode="rollback")])
    assert roles() == {"stable"}
    router.configure([_route(mode="pin")])  # freezes what was in force: rolled back
    assert roles() == {"stable"}
    router.configure([_route(mode="auto")])
    assert roles() == {"stable", "candidate"}


# ---- the decision rule ----


def test_no_decision_before_min_requests() -> None:
    assert judge(_route(min_requests=20), _signals("s", 100), _signals("c", 19, errors=19)) is None


def test_rollback_on_error_rate() -> None:
    verdict = judge(_route(min_requests=20), _signals("s", 100, errors=1), _signals("c", 20, errors=2))
    assert verdict is not None and verdict.decision == "rolled_back"
    assert "error rate 10.0% > stable 1.0% + 5.0% after 20 requests" in verdict.reason
    # 5 points more than stable is still within the allowed increase.
    assert judge(_route(min_requests=20), _signals("s", 100, errors=5), _signals("c", 20, errors=2)) is None


def test_rollback_on_latency() -> None:
    verdict = judge(_route(min_requests=20), _signals("s", 100, latency=0.1), _signals("c", 20, latency=0.25))
    assert verdict is not None and verdict.decision == "rolled_back" and "p50 latency 250.0 ms" in verdict.reason
    assert judge(_route(min_requests=20), _signals("s", 100, latency=0.1), _signals("c", 20, latency=0.19)) is None


def test_rollback_on_feedback_only_when_asked() -> None:
    stable, candidate = _signals("s", 100), _signals("c", 20)
    assert judge(_route(), stable, candidate, (4.5, 3.0)) is None
    verdict = judge(_route(min_feedback_delta=1.0), stable, candidate, (4.5, 3.0))
    assert verdict is not None and verdict.decision == "rolled_back" and "mean rating 3.00" in verdict.reason
    assert judge(_route(min_feedback_delta=1.0), stable, candidate, (4.5, 4.0)) is None
    assert judge(_route(min_feedback_delta=1.0), stable, candidate, (None, 1.0)) is None


def test_promote_after_the_window() -> None:
    route = _route(min_requests=20, window_requests=50)
    assert judge(route, _signals("s", 200), _signals("c", 49)) is None
    verdict = judge(route, _signals("s", 200), _signals("c", 50))
    assert verdict is not None and verdict.decision == "promoted"


# ---- the book (the shared actor's state) ----


def _record(book: CanaryBook, route: AdapterRoute, role: str, count: int, error: bool = False) -> list[str]:
    lines = []
    for _ in range(count):
        line = book.record((route.name, route.stable, route.candidate), role, error, 0.1)  # type: ignore[arg-type]
        if line:
            lines.append(line)
    return lines


def _state(book: CanaryBook, route: AdapterRoute) -> dict[str, Any]:
    return next(s for s in book.snapshot()["states"] if (s["name"], s["candidate"]) == (route.name, route.candidate))


def test_book_rolls_back_once_and_keeps_the_verdict_for_the_pair() -> None:
    clock = _Clock()
    book = CanaryBook(wall=clock)
    route = _route(min_requests=10)
    assert book.configure([route], BASE)  # logged: canary at weight 0.2
    assert _state(book, route)["decision"] == "canary"
    _record(book, route, "stable", 40)
    clock.now += 30
    lines = _record(book, route, "candidate", 10, error=True)
    assert len(lines) == 1 and "rolled_back at weight 0" in lines[0]
    state = _state(book, route)
    assert (state["decision"], state["weight"]) == ("rolled_back", 0.0)
    assert state["since"] == "2027-01-15T08:00:30Z"
    assert state["signals"]["candidate"]["errors"] == 10 and state["signals"]["stable"]["requests"] == 40
    # Another replica configuring the same route changes nothing; a weight edit keeps the verdict.
    assert book.configure([route], BASE) == []
    book.configure([_route(min_requests=10, weight=0.5)], BASE)
    assert _state(book, route)["decision"] == "rolled_back"
    # A new candidate starts a new canary with fresh signals.
    fresh = _route(candidate="bot.v3")
    book.configure([fresh], BASE)
    assert _state(book, fresh)["decision"] == "canary" and _state(book, fresh)["signals"]["stable"]["requests"] == 0
    totals = {(route, version): (count, errors) for route, version, count, errors in book.snapshot()["totals"]}
    assert totals == {("bot", "bot.v1"): (40, 0), ("bot", "bot.v2"): (10, 10)}


def test_book_promotes_and_manual_modes_override() -> None:
    book = CanaryBook(wall=_Clock())
    route = _route(min_requests=5, window_requests=20)
    book.configure([route], BASE)
    _record(book, route, "stable", 50)
    assert _record(book, route, "candidate", 19) == []
    assert "promoted at weight 1" in _record(book, route, "candidate", 1)[0]
    book.configure([_route(min_requests=5, window_requests=20, mode="rollback")], BASE)
    assert (_state(book, route)["decision"], _state(book, route)["weight"]) == ("rolled_back", 0.0)
    book.configure([_route(min_requests=5, window_requests=20, mode="pin")], BASE)
    assert (_state(book, route)["decision"], _state(book, route)["weight"]) == ("pinned", 0.0)
    book.configure([_route(min_requests=5, window_requests=20, mode="pin", weight=0.9)], BASE)
    assert _state(book, route)["weight"] == 0.0  # pinned: the configured weight does not move it
    book.configure([_route(min_requests=5, window_requests=20, mode="auto")], BASE)
    assert (_state(book, route)["decision"], _state(book, route)["weight"]) == ("promoted", 1.0)


def test_book_without_candidate_and_with_base_stable() -> None:
    book = CanaryBook(wall=_Clock())
    only = _route(candidate=None)
    first = _route(name="first", stable=None, candidate="bot.v1")
    book.configure([only, first], BASE)
    assert _state(book, only)["decision"] == "stable" and _state(book, only)["weight"] == 0.0
    assert _state(book, first)["signals"]["stable"]["version"] == BASE


# ---- the replica's router with a shared (in-process) actor ----


class _Method:
    def __init__(self, fn: Callable[..., Awaitable[Any]]) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Awaitable[Any]:
        return self.fn(*args)


class _FakeActor:
    """A `CanaryActor` called the way Ray calls it (`actor.sync.remote(...)` -> awaitable)."""

    def __init__(self) -> None:
        self.actor = CanaryActor("app", BASE)
        self.sync = _Method(self.actor.sync)


def _answering(error: Exception | None = None) -> Callable[[str], Awaitable[str]]:
    """An `open_answer` whose answer is the engine model it was opened for (or `error`)."""

    async def answer(engine_model: str) -> str:
        if error is not None:
            raise error
        return engine_model

    return answer


def _status_of(error: BaseException) -> int:
    return error.status if isinstance(error, APIError) else 500


async def _collect(router: CanaryRouter, choice: Choice, open_answer: Any) -> Opened:
    opened = await router.open(choice, open_answer, _status_of)
    router.finish(opened, failed=False)
    return opened


def test_a_verdict_reaches_every_replica_through_the_actor() -> None:
    async def scenario() -> None:
        shared = _FakeActor()
        replicas = [CanaryRouter("app", BASE, actor_factory=lambda app, base: shared) for _ in range(2)]
        route = _route(min_requests=10, weight=1.0)
        for router in replicas:
            router.configure([route])
        first, second = replicas
        choice = first.choose("tiny:bot", "alice")
        assert choice is not None and choice.role == "candidate"
        broken = {"tiny:bot.v2": APIError(500, "adapter failed to load")}
        engine_models = []

        async def open_answer(engine_model: str) -> str:
            engine_models.append(engine_model)
            return await _answering(broken.get(engine_model))(engine_model)

        for _ in range(10):
            opened = await _collect(first, choice, open_answer)
            assert opened.answer == "tiny:bot.v1" and opened.choice.role == "stable"  # answered by stable
            assert opened.choice.requested == "tiny:bot"
        assert engine_models[:2] == ["tiny:bot.v2", "tiny:bot.v1"]
        await first.sync()
        assert first.weights["bot"] == 0.0
        await second.sync()
        assert second.weights["bot"] == 0.0
        after = second.choose("tiny:bot", "alice")
        assert after is not None and after.role == "stable"
        view = {entry["id"]: entry for entry in await second.view()}
        assert view["tiny:bot"]["decision"] == "rolled_back"
        assert view["tiny:bot"]["signals"]["candidate"]["errors"] == 10
        assert view["tiny:bot"]["signals"]["stable"]["requests"] == 10
        metrics = {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(await second.metrics_text())
            for sample in family.samples
        }
        assert metrics[("bigmodel_route_errors_total", (("route", "bot"), ("version", "bot.v2")))] == 10
        assert metrics[("bigmodel_route_requests_total", (("route", "bot"), ("version", "bot.v1")))] == 10
        assert metrics[("bigmodel_route_decision", (("decision", "rolled_back"), ("route", "bot")))] == 1
        assert metrics[("bigmodel_route_candidate_weight", (("route", "bot"),))] == 0

    asyncio.run(scenario())


def test_client_errors_are_not_charged_and_not_retried() -> None:
    async def scenario() -> None:
        shared = _FakeActor()
        router = CanaryRouter("app", BASE, actor_factory=lambda app, base: shared)
        router.configure([_route(weight=1.0)])
        choice = router.choose("tiny:bot", "alice")
        assert choice is not None
        with pytest.raises(APIError):
            await _collect(router, choice, _answering(APIError(400, "bad temperature")))
        await router.sync()
        state = (await router.view())[0]
        assert state["signals"]["candidate"]["requests"] == 1 and state["signals"]["candidate"]["errors"] == 0
        assert state["signals"]["stable"]["requests"] == 0

    asyncio.run(scenario())


# ---- the config ----


def _config(routes: list[dict[str, Any]]) -> IngressConfig:
    adapters = [{"name": name, "uri": f"file:///adapters/{name}"} for name in ("bot.v1", "bot.v2", "lora")]
    return parse_ingress_config({"auth": {"mode": "none"}, "adapters": adapters, "routes": routes})


def test_routes_must_name_served_adapters() -> None:
    assert _config([{"name": "bot", "stable": "bot.v1", "candidate": "bot.v2"}]).routes[0].weight == 0.2
    bad: dict[str, list[dict[str, Any]]] = {
        "not one of the adapters": [{"name": "bot", "stable": "bot.v0"}],
        "repeated": [{"name": "bot"}, {"name": "bot"}],
        "name of an adapter": [{"name": "lora"}],
        "the same adapter": [{"name": "bot", "stable": "bot.v1", "candidate": "bot.v1"}],
        "less than or equal to 1": [{"name": "bot", "weight": 1.5}],
    }
    for message, routes in bad.items():
        with pytest.raises(InvalidServeArgsError, match=message):
            _config(routes)


def test_book_rolls_back_on_ratings_from_the_feedback_store() -> None:
    book = CanaryBook(wall=_Clock())
    route = _route(min_requests=5, min_feedback_delta=0.5)
    book.configure([route], BASE)
    assert book.wants_feedback() == ["bot.v1", "bot.v2"]
    book.feedback.update({"bot.v1": mean_rating((12, 4.5)), "bot.v2": mean_rating((6, 3.0))})
    assert mean_rating((0, 0.0)) is None  # no ratings yet: no opinion
    _record(book, route, "stable", 20)
    lines = _record(book, route, "candidate", 5)
    assert len(lines) == 1 and "mean rating 3.00 < stable 4.50 - 0.5" in lines[0]
    assert _state(book, route)["signals"]["candidate"]["feedback_mean"] == 3.0
    assert book.wants_feedback() == []  # decided: no more look-ups
