"""Killing a dependency mid-traffic, on the real stack (Ray Serve, vLLM's CPU engine): fail closed, never 500.

Hold-out-style cases (what an operator of a multi-tenant cluster does to a running model):
- the quota actor's process is killed while keys with quotas send requests: those requests get 503 with
  Retry-After and an OpenAI-style body (never 500) until Ray restarts the actor, then 200 again;
- meanwhile the metrics port still serves vLLM's engine metrics, and says which source failed
  (`bigmodel_metrics_source_up`);
- the serving port never shows metrics (key names, usage): 404 there.
(Unit tests cover the rest without Ray: a wedged actor (timeout), the feedback actor gone, an ingress
before its first configuration, readiness without an engine replica: tests/unit/serving/test_serving_ingress.py.)
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from .conftest import MODEL, ServingStack

COMPLETION = {"model": MODEL, "prompt": "Hello", "max_tokens": 1, "temperature": 0}
QUOTA_KEY = "bob"  # given a quota small enough that every request asks the quota actor (no lease)


def _kill_quota_actor(app_name: str) -> None:
    """Kill the actor's process as a crash would; Ray restarts it (max_restarts=-1), its state lost."""
    import ray

    from bigmodel_serving.quota import ACTOR_NAMESPACE, actor_name

    ray.kill(ray.get_actor(actor_name(app_name), namespace=ACTOR_NAMESPACE), no_restart=False)


@pytest.fixture
def bob_with_a_quota(serving: ServingStack) -> Any:
    application = serving.application
    ingress = next(d for d in application["deployments"] if d["name"] == "BigModelIngress")
    quotas = ingress["user_config"].setdefault("quotas", {}).setdefault("keys", {})
    quotas[QUOTA_KEY] = {"requests_per_minute": 19}
    serving.redeploy(application)
    try:
        yield
    finally:
        quotas.pop(QUOTA_KEY, None)
        serving.redeploy(application)


def test_killing_the_quota_actor_is_503_never_500_and_metrics_go_on(
    serving: ServingStack, bob_with_a_quota: Any
) -> None:
    statuses: Counter[int] = Counter()
    bad: list[str] = []
    stop = threading.Event()

    def traffic() -> None:
        with serving.http(serving.keys[QUOTA_KEY]) as client:
            while not stop.is_set():
                answer = client.post("/v1/completions", json=COMPLETION)
                statuses[answer.status_code] += 1
                if answer.status_code == 503:
                    error = answer.json()["error"]
                    if not answer.headers.get("Retry-After") or set(error) != {"message", "type", "param", "code"}:
                        bad.append(answer.text)
                elif answer.status_code not in (200, 429):
                    bad.append(f"{answer.status_code} {answer.text}")
                time.sleep(0.2)

    with serving.http(serving.keys[QUOTA_KEY]) as client:
        assert client.post("/v1/completions", json=COMPLETION).status_code == 200  # the actor is up
    senders = [threading.Thread(target=traffic) for _ in range(2)]
    for sender in senders:
        sender.start()
    try:
        time.sleep(2)
        _kill_quota_actor(serving.application["name"])
        metrics = serving.metrics()  # right away, while the actor is down or restarting
        assert "vllm:num_requests_running" in metrics
        assert 'bigmodel_metrics_source_up{source="engine"} 1' in metrics
        deadline = time.monotonic() + 120
        recovered = False
        while time.monotonic() < deadline and not recovered:  # back: bob is answered again
            time.sleep(1)
            with serving.http(serving.keys[QUOTA_KEY]) as client:
                recovered = client.post("/v1/completions", json=COMPLETION).status_code in (200, 429)
        assert recovered, f"bob was not answered again within 120 s: {dict(statuses)}"
    finally:
        stop.set()
        for sender in senders:
            sender.join()
    assert not bad, bad[:3]
    assert statuses[500] == 0, dict(statuses)
    # Keys without a quota never needed the actor.
    with serving.http() as alice:
        assert alice.post("/v1/completions", json=COMPLETION).status_code == 200
    after = httpx.get(serving.metrics_url, timeout=60).text
    assert 'bigmodel_metrics_source_up{source="quota"} 1' in after
