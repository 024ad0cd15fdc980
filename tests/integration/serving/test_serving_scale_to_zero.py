"""Scale to zero that holds requests, with real Ray Serve and the real vLLM engine on this machine.

The session's application is redeployed with the engine at `min_replicas: 0` and a 1 s idle period (what
the operator renders from `scaling.minReplicas: 0` / `idleSeconds`, a light edit), so Serve stops the
engine replica. Then a streamed chat completion arrives: the ingress holds it while Serve starts a
replica (vLLM loads the model again) and it is answered, streamed; five more requests sent during that
wake are held and all answer 200. Before that, with a 2 s hold bound (`wakeTimeoutSeconds`), a request at
zero gets 503 `model_not_ready` with Retry-After instead of waiting. One wake in all (a vLLM start costs minutes
on this machine); its duration is printed. The wake's phases on a real node: tests/e2e (status.lastColdStart).
"""

from __future__ import annotations

import copy
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from ray import serve

from bigmodel_serving.args import ENGINE_DEPLOYMENT, INGRESS_DEPLOYMENT

from .conftest import MODEL, ServingStack

WAKE_TIMEOUT_S = 1500  # a cold vLLM start on the loaded 2-core machine takes minutes


def _running_engines(app_name: str) -> int:
    app = serve.status().applications.get(app_name)
    deployment = app.deployments.get(ENGINE_DEPLOYMENT) if app else None
    if deployment is None:
        return 0
    return sum(n for state, n in (deployment.replica_states or {}).items() if state == "RUNNING")


def _at_zero(app_name: str, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while _running_engines(app_name) > 0:
        assert time.monotonic() < deadline, "the engine did not scale to zero"
        time.sleep(1)


def _scale_to_zero(application: dict[str, Any], wake_timeout_s: float) -> dict[str, Any]:
    edited = copy.deepcopy(application)
    for deployment in edited["deployments"]:
        if deployment["name"] == ENGINE_DEPLOYMENT:
            scaling = deployment["autoscaling_config"]
            scaling.update(min_replicas=0, max_replicas=1, downscale_to_zero_delay_s=1)
        if deployment["name"] == INGRESS_DEPLOYMENT:
            deployment["user_config"]["wake_timeout_s"] = wake_timeout_s
    return edited


def _chat(url: str, key: str, stream: bool) -> dict[str, Any]:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "stream": stream}
    headers = {"Authorization": f"Bearer {key}"}
    started = time.monotonic()
    with httpx.Client(timeout=WAKE_TIMEOUT_S) as client:
        if not stream:
            answer = client.post(f"{url}/v1/chat/completions", json=body, headers=headers)
            return {"status": answer.status_code, "seconds": time.monotonic() - started, "text": answer.text}
        events, first = [], None
        with client.stream("POST", f"{url}/v1/chat/completions", json=body, headers=headers) as answer:
            for line in answer.iter_lines():
                if line.startswith("data:"):
                    first = first or time.monotonic() - started
                    events.append(line[5:].strip())
            return {
                "status": answer.status_code,
                "seconds": time.monotonic() - started,
                "first": first,
                "events": events,
            }


def test_requests_at_zero_are_held_while_the_engine_wakes_then_answered(serving: ServingStack) -> None:
    app_name = serving.application["name"]
    try:
        # A 2 s hold bound first: a request at zero is refused with 503 model_not_ready and Retry-After.
        serving.redeploy(_scale_to_zero(serving.application, wake_timeout_s=2))
        _at_zero(app_name)
        with serving.http() as client:  # the endpoint answers at zero: models, auth
            assert client.get("/v1/models").status_code == 200
        with serving.http("") as anonymous:
            assert anonymous.post("/v1/chat/completions", json={"model": MODEL, "messages": []}).status_code == 401
        with serving.http() as client:
            started = time.monotonic()
            refused = client.post(
                "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
            )
            waited = time.monotonic() - started
        print(f"\npast the 2 s bound: {refused.status_code} after {waited:.1f} s")
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "model_not_ready", refused.text
        assert int(refused.headers["retry-after"]) > 0
        assert waited < 60

        # The same zero with a long bound (an ingress user_config edit; the engine's deployment is unchanged):
        # requests are held while the engine wakes, then answered. The refused request may have begun the wake
        # already (Serve scales up from zero on the first queued request); either way no engine replica runs
        # yet, which is what holding is about. One wake per test: the woken replica stays for the tests after.
        serving.redeploy(_scale_to_zero(serving.application, wake_timeout_s=WAKE_TIMEOUT_S))
        assert _running_engines(app_name) == 0
        results: dict[str, Any] = {}
        streamed = threading.Thread(target=lambda: results.update(stream=_chat(serving.url, serving.api_key, True)))
        streamed.start()
        time.sleep(2)  # these arrive during the wake
        with ThreadPoolExecutor(5) as pool:
            concurrent = list(pool.map(lambda _: _chat(serving.url, serving.api_key, False), range(5)))
        streamed.join(WAKE_TIMEOUT_S)
        held = results["stream"]
        others = ", ".join(f"{r['seconds']:.1f}" for r in concurrent)
        print(f"held at zero: streamed chat's first chunk after {held['first']:.1f} s, done after ", end="")
        print(f"{held['seconds']:.1f} s; the 5 sent during the wake answered after {others} s")
        assert held["status"] == 200, held
        assert held["events"][-1] == "[DONE]" and len(held["events"]) >= 2, held["events"]
        assert [r["status"] for r in concurrent] == [200] * 5, [r["text"][:300] for r in concurrent]
        assert _running_engines(app_name) == 1
    finally:
        serving.redeploy(serving.application)  # min 1 again: the woken replica stays (or one starts)
    assert _running_engines(app_name) == 1
