"""Autoscaling under real load: Serve adds an engine replica (real vLLM) past the target and removes it after.

The session's application, redeployed with the engine between 1 and 2 replicas and a target of 1 ongoing
request; streamed completions from 2 clients (twice the target) push it up, the new replica takes requests, the clients stop
and the replica drains and goes. Every request must answer 200 with a complete stream: a scale-down that cut
an in-flight stream would fail it. Timings are printed, never asserted.
"""

from __future__ import annotations

import copy
import threading
import time
from typing import Any

import httpx
from ray import serve

from .conftest import MODEL, ServingStack

# Twice the target is enough for Serve to want 2 replicas; more clients only slow the second engine's start on
# this 2-core machine (they share its cores) without proving more.
CLIENTS = 2
BODY = {"model": MODEL, "prompt": "Tell me a story.", "max_tokens": 48, "ignore_eos": True, "stream": True}


def _running_engines(app_name: str) -> int:
    deployment = serve.status().applications[app_name].deployments["BigModelEngine"]
    return sum(count for state, count in deployment.replica_states.items() if str(state).endswith("RUNNING"))


def _wait(predicate: Any, timeout_s: float, what: str) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout_s, f"timed out after {timeout_s:.0f} s waiting for {what}"
        time.sleep(1)
    return time.monotonic() - started


def test_one_to_two_to_one_engine_replicas_without_a_failed_request(serving: ServingStack) -> None:
    app_name = serving.application["name"]
    scaled = copy.deepcopy(serving.application)
    engine = next(d for d in scaled["deployments"] if d["name"] == "BigModelEngine")
    engine["autoscaling_config"] = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 0,
        "downscale_delay_s": 5,
    }
    outcomes: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(base_url=serving.url, timeout=300) as http:
            while not stop.is_set():
                headers = {"Authorization": f"Bearer {serving.api_key}"}
                try:
                    with http.stream("POST", "/v1/completions", json=BODY, headers=headers) as response:
                        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
                    done = response.status_code == 200 and lines and lines[-1] == "data: [DONE]"
                    outcomes.append("ok" if done else f"{response.status_code} {lines[-2:]}")
                except httpx.HTTPError as error:
                    outcomes.append(repr(error))

    serving.redeploy(scaled)
    threads = [threading.Thread(target=client, daemon=True) for _ in range(CLIENTS)]
    try:
        for thread in threads:
            thread.start()
        up_s = _wait(lambda: _running_engines(app_name) >= 2, 1200, "a second engine replica RUNNING")
        served_before = len(outcomes)
        time.sleep(10)  # both replicas take requests
        stop.set()
        for thread in threads:
            thread.join(timeout=300)
        stopped = time.monotonic()
        down_s = _wait(lambda: _running_engines(app_name) == 1, 600, "back to one engine replica")
        print(
            f"\nscale: load start -> 2 engine replicas RUNNING {up_s:.0f} s; load stop -> 1 replica "
            f"{down_s:.0f} s; {len(outcomes)} streamed requests ({len(outcomes) - served_before} while both ran), "
            f"{sum(o != 'ok' for o in outcomes)} failed; drained at {time.monotonic() - stopped:.0f} s"
        )
    finally:
        stop.set()
        serving.redeploy(serving.application)
    failed = [outcome for outcome in outcomes if outcome != "ok"]
    assert outcomes and not failed, failed[:5]
