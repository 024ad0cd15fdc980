"""Canary routes on the real stack: sticky versions per key, manual and automatic rollback, engine kept.

The session's application is redeployed (user_config only, as the operator does) with three versions of
one adapter: `bot.v1` (the session's adapter), `bot.v2` (a second tiny adapter, another seed) and
`bot.bad` (a directory vLLM cannot load, so every request to it fails in the engine), and a route `bot`
that clients call as `tiny-llama:bot`. The split over many keys is a unit test
(tests/unit/serving/test_serving_canary.py); here the session's two unlimited keys land on either side.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from ray import serve

from bigmodel_serving.args import ENGINE_DEPLOYMENT, INGRESS_DEPLOYMENT
from bigmodel_serving.canary import MODEL_HEADER, key_share

from .conftest import MODEL, ServingStack

ROUTE = f"{MODEL}:bot"
KEYS = ("alice", "bob")  # "limited" has a 3 requests/minute quota


@pytest.fixture(scope="module")
def versions(tiny_model_dir: Path, tiny_adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from bigmodel_training.tinymodel import make_tiny_lora_adapter

    v2 = make_tiny_lora_adapter(tiny_model_dir, tiny_model_dir.parent / f"{tiny_model_dir.name}-lora-test-v2", seed=2)
    bad = tmp_path_factory.mktemp("bad-adapter")
    (bad / "adapter_config.json").write_text("{ this is not an adapter")
    (bad / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    return {"bot.v1": tiny_adapter_dir, "bot.v2": v2, "bot.bad": bad}


def _engine_replicas(app_name: str) -> list[dict[str, Any]]:
    handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, app_name=app_name)
    return sorted(handle.broadcast("replica_info").results(), key=lambda info: info["replica_id"])


def _with_route(serving: ServingStack, versions: dict[str, Path], **route: Any) -> dict[str, Any]:
    application = copy.deepcopy(serving.application)
    for deployment in application["deployments"]:
        config = deployment["user_config"]
        config["adapters"] = list(config["adapters"]) + [
            {"name": name, "uri": path.as_uri()} for name, path in versions.items()
        ]
        if deployment["name"] == INGRESS_DEPLOYMENT:
            config["routes"] = [{"name": "bot", "stable": "bot.v1", **route}]
    return application


def _ask(serving: ServingStack, key: str, model: str = ROUTE) -> httpx.Response:
    with serving.http(serving.keys[key]) as client:
        return client.post(
            "/v1/completions", json={"model": model, "prompt": "The canary", "max_tokens": 6, "temperature": 0}
        )


def _route_state(serving: ServingStack) -> dict[str, Any]:
    with serving.http() as client:
        response = client.get("/v1/routes")
    assert response.status_code == 200, response.text
    return next(entry for entry in response.json()["data"] if entry["id"] == ROUTE)


def _wait_for_state(serving: ServingStack, check: Any, timeout_s: float = 120) -> dict[str, Any]:
    """The route's state once `check(state)` holds (signals reach /v1/routes with the next sync)."""
    deadline = time.monotonic() + timeout_s
    while not check(state := _route_state(serving)):
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    return state


@pytest.fixture
def restore(serving: ServingStack) -> Iterator[None]:
    yield
    serving.redeploy(serving.application)


def test_route_split_sticky_rollback_by_hand_and_automatic(
    serving: ServingStack, versions: dict[str, Path], restore: None
) -> None:
    app_name = serving.application["name"]
    before = _engine_replicas(app_name)
    # A weight between the two keys' shares: one key gets the candidate, the other stays on stable.
    shares = {key: key_share(key, "bot", "bot.v2") for key in KEYS}
    weight = sum(shares.values()) / 2
    expected = {key: "bot.v2" if share < weight else "bot.v1" for key, share in shares.items()}
    assert sorted(expected.values()) == ["bot.v1", "bot.v2"]
    serving.redeploy(_with_route(serving, versions, candidate="bot.v2", weight=weight))

    with serving.http() as client:
        listed = [model["id"] for model in client.get("/v1/models").json()["data"]]
        assert ROUTE in listed
        assert client.get(f"/v1/models/{ROUTE}").json()["id"] == ROUTE
    for key in KEYS:
        direct = _ask(serving, key, f"{MODEL}:{expected[key]}")
        assert direct.status_code == 200, direct.text
        for _ in range(3):  # sticky: the same version every time, answering as the route
            answer = _ask(serving, key)
            assert answer.status_code == 200, answer.text
            assert answer.headers[MODEL_HEADER] == f"{MODEL}:{expected[key]}"
            assert answer.json()["model"] == ROUTE
            assert answer.json()["choices"][0]["text"] == direct.json()["choices"][0]["text"]
    state = _wait_for_state(serving, lambda state: (state["signals"]["candidate"] or {}).get("requests", 0) >= 3)
    assert (state["decision"], state["stable"], state["candidate"]) == ("canary", "bot.v1", "bot.v2")
    assert state["signals"]["candidate"]["errors"] == 0 and state["signals"]["stable"]["errors"] == 0

    # Rollback by hand: a user_config edit; the engine replica is the same one.
    serving.redeploy(_with_route(serving, versions, candidate="bot.v2", weight=weight, mode="rollback"))
    assert _engine_replicas(app_name) == before
    for key in KEYS:
        answer = _ask(serving, key)
        assert answer.status_code == 200, answer.text
        assert answer.headers[MODEL_HEADER] == f"{MODEL}:bot.v1"
    state = _route_state(serving)
    assert (state["decision"], state["weight"]) == ("rolled_back", 0.0)

    # Automatic rollback: every key on a candidate that fails in the engine.
    serving.redeploy(_with_route(serving, versions, candidate="bot.bad", weight=1.0, min_requests=3))
    statuses = []
    deadline = time.monotonic() + 300
    while _route_state(serving)["decision"] != "rolled_back":
        assert time.monotonic() < deadline, _route_state(serving)
        for key in KEYS:
            statuses.append(_ask(serving, key).status_code)
    state = _route_state(serving)
    assert state["weight"] == 0.0 and "error rate" in state["reason"], state
    assert state["signals"]["candidate"]["errors"] >= 3
    for key in KEYS:
        answer = _ask(serving, key)
        statuses.append(answer.status_code)
        assert answer.headers[MODEL_HEADER] == f"{MODEL}:bot.v1"
    assert set(statuses) == {200}  # the failed candidate attempts were answered by stable
    with serving.http() as client:
        metrics = serving.metrics()
    assert 'bigmodel_route_errors_total{route="bot",version="bot.bad"}' in metrics
    assert 'bigmodel_route_decision{route="bot",decision="rolled_back"} 1' in metrics
    assert _engine_replicas(app_name) == before
