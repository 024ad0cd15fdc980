"""Canary routes without Ray: the sticky split, the decision rule, the shared book, the replica's router."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from canary_bench import InProcessActor
from prometheus_client.parser import text_string_to_metric_families

from bigmodel_serving.args import AdapterRoute, IngressConfig, InvalidServeArgsError, parse_ingress_config
from bigmodel_serving.canary import (
    CanaryRouter,
    Choice,
    Opened,
    key_share,
    picks_candidate,
    quality_counts,
)
from bigmodel_serving.canary_book import CanaryBook, settings_of
from bigmodel_serving.canary_state import DirectoryStateStore
from bigmodel_serving.errors import APIError

BASE = "tiny"
KEYS = [f"key-{index:03d}" for index in range(500)]  # fixed names: the split is deterministic


def _route(**fields: Any) -> AdapterRoute:
    values: dict[str, Any] = {"name": "bot", "stable": "bot.v1", "candidate": "bot.v2", "weight": 0.2}
    values.update(fields)
    return AdapterRoute.model_validate(values)


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


# ---- the rule's settings (the rule itself: test_serving_canary_rule.py) ----


def test_route_settings_become_the_rules() -> None:
    route = _route(max_error_rate_increase=0.03, quality="auto")
    assert settings_of(route, feedback_enabled=True).quality == "required"
    assert settings_of(route, feedback_enabled=False).quality == "off"
    assert settings_of(_route(quality="guard"), feedback_enabled=False).quality == "off"  # no ratings can come
    settings = settings_of(route, feedback_enabled=True)
    assert settings.max_error_rate_increase == 0.03 and settings.alpha() == pytest.approx(0.05 / 3)


def test_per_request_split_draws_every_request() -> None:
    router = CanaryRouter("app", BASE)
    router.configure([_route(split="request", weight=0.3)])
    draws = iter([0.1, 0.5, 0.29, 0.31])
    router.draw = lambda: next(draws)
    roles = [choice.role for _ in range(4) if (choice := router.choose("tiny:bot", "anonymous"))]
    assert roles == ["candidate", "stable", "candidate", "stable"]


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
    assert len(lines) == 1 and "rolled_back at weight 0: error rate 100.0% vs stable 0.0%" in lines[0]
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
    route = _route(min_requests=5)
    book.configure([route], BASE)
    _record(book, route, "stable", 2000)
    lines = _record(book, route, "candidate", 1000)
    assert len(lines) == 1 and "promoted at weight 1: error rate 0.0% vs stable 0.0%" in lines[0]
    book.configure([_route(min_requests=5, mode="rollback")], BASE)
    assert (_state(book, route)["decision"], _state(book, route)["weight"]) == ("rolled_back", 0.0)
    book.configure([_route(min_requests=5, mode="pin")], BASE)
    assert (_state(book, route)["decision"], _state(book, route)["weight"]) == ("pinned", 0.0)
    book.configure([_route(min_requests=5, mode="pin", weight=0.9)], BASE)
    assert _state(book, route)["weight"] == 0.0  # pinned: the configured weight does not move it
    book.configure([_route(min_requests=5, mode="auto")], BASE)
    assert (_state(book, route)["decision"], _state(book, route)["weight"]) == ("promoted", 1.0)


def test_an_undecided_canary_is_resolved_at_its_deadline_as_the_route_says() -> None:
    for on_deadline, decision in (("rollback", "rolled_back"), ("promote", "promoted")):
        clock = _Clock()
        book = CanaryBook(wall=clock)
        route = _route(started_at=clock.now - 3000, deadline_s=3600, on_deadline=on_deadline)
        book.configure([route], BASE)
        _record(book, route, "candidate", 3)
        assert _state(book, route)["decision"] == "canary"
        assert _state(book, route)["started"] == "2027-01-15T07:10:00Z"
        clock.now += 601
        lines = book.configure([route], BASE)
        assert _state(book, route)["decision"] == decision, lines
        assert "undecided 1 h after the canary began" in _state(book, route)["reason"]


def test_the_evidence_survives_a_restart_of_the_actor_through_the_sink(tmp_path: Any) -> None:
    store = DirectoryStateStore(tmp_path)
    clock = _Clock()
    book = CanaryBook(wall=clock)
    route = _route(min_requests=10)
    book.configure([route], BASE)
    _record(book, route, "stable", 30)
    _record(book, route, "candidate", 7, error=True)
    state = book.states[("bot", "bot.v1", "bot.v2")]
    store.save("bot", "bot.v2", CanaryBook.dump_pair(state))
    restarted = CanaryBook(wall=clock)
    restarted.configure([route], BASE, restore=lambda pair: store.load(pair[0], str(pair[2])))
    assert _state(restarted, route)["signals"]["candidate"]["errors"] == 7
    lines = _record(restarted, route, "candidate", 3, error=True)  # 10 candidate requests in all: decided
    assert len(lines) == 1 and "rolled_back" in lines[0]
    assert store.load("bot", "bot.v9") is None


def test_ratings_from_the_feedback_store_roll_back_by_quality_alone() -> None:
    book = CanaryBook(wall=_Clock(), feedback_enabled=True)
    route = _route(min_requests=5)
    book.configure([route], BASE)
    started = book.states[("bot", "bot.v1", "bot.v2")].started
    assert book.wants_quality() == [("bot.v1", started), ("bot.v2", started)]
    assert quality_counts((12, 1)) == (12, 1) and quality_counts([3, 5]) is None and quality_counts("x") is None
    book.set_quality("bot.v1", 40, 2)
    book.set_quality("bot.v2", 20, 18)
    lines = _record(book, route, "stable", 20) + _record(book, route, "candidate", 5)
    assert len(lines) == 1 and "bad-answer rate 90.0% vs stable 5.0% over 20/40 ratings" in lines[0]
    assert _state(book, route)["signals"]["candidate"]["bad_answers"] == 18
    assert book.wants_quality() == []  # decided: no more look-ups


def test_book_without_candidate_and_with_base_stable() -> None:
    book = CanaryBook(wall=_Clock())
    only = _route(candidate=None)
    first = _route(name="first", stable=None, candidate="bot.v1")
    book.configure([only, first], BASE)
    assert _state(book, only)["decision"] == "stable" and _state(book, only)["weight"] == 0.0
    assert _state(book, first)["signals"]["stable"]["version"] == BASE


# ---- the replica's router with a shared (in-process) actor ----


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
        shared = InProcessActor("app", BASE)
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
        shared = InProcessActor("app", BASE)
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
