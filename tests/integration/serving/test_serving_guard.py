"""Our ingress on real Ray Serve: keys, rotation, per-key quotas, limits, errors, metrics, disconnects."""

from __future__ import annotations

import time

import httpx
from prometheus_client.parser import text_string_to_metric_families

from .conftest import LIMITED_RPM, MODEL, ServingStack

COMPLETION = {"model": MODEL, "prompt": "Hello", "max_tokens": 1}
ERROR_FIELDS = {"message", "type", "param", "code"}


def _metric_values(text: str, family: str) -> list[tuple[dict[str, str], float]]:
    for item in text_string_to_metric_families(text):
        if item.name == family:
            return [(sample.labels, sample.value) for sample in item.samples]
    return []


def test_v1_needs_a_key(serving: ServingStack) -> None:
    with serving.http(key="") as anonymous:
        missing = anonymous.post("/v1/completions", json=COMPLETION)
        assert missing.status_code == 401
        assert set(missing.json()["error"]) == ERROR_FIELDS
        assert anonymous.get("/v1/models").status_code == 401
        assert anonymous.get("/health").status_code == 200  # probes need no key
        assert anonymous.get("/health/ready").json()["status"] == "ready"  # configured, an engine replica runs
        # No metrics on the serving port: key names and usage are on the metrics deployment's own port.
        assert anonymous.get("/metrics").status_code == 404
    with serving.http(key="sk-wrong") as wrong:
        assert wrong.post("/v1/completions", json=COMPLETION).status_code == 401
    with serving.http() as alice:
        assert alice.post("/v1/completions", json=COMPLETION).status_code == 200


def test_keys_rotate_without_restart(serving: ServingStack) -> None:
    carol = serving.keys_dir / "carol"
    carol.write_text("sk-carol-1\n")
    try:
        deadline = time.monotonic() + 10
        status = 0
        while time.monotonic() < deadline and status != 200:
            with serving.http(key="sk-carol-1") as client:
                status = client.get("/v1/models").status_code
            time.sleep(0.5)
        assert status == 200
    finally:
        carol.unlink()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and status != 401:
        with serving.http(key="sk-carol-1") as client:
            status = client.get("/v1/models").status_code
        time.sleep(0.5)
    assert status == 401


def test_a_key_over_quota_gets_429_while_others_go_on(serving: ServingStack) -> None:
    with serving.http(key=serving.keys["limited"]) as limited, serving.http() as alice:
        statuses = [limited.post("/v1/completions", json=COMPLETION).status_code for _ in range(LIMITED_RPM + 1)]
        assert statuses[:LIMITED_RPM] == [200] * LIMITED_RPM
        refused = limited.post("/v1/completions", json=COMPLETION)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert alice.post("/v1/completions", json=COMPLETION).status_code == 200
        metrics = serving.metrics()
    by_code = {
        labels["code"]: value
        for labels, value in _metric_values(metrics, "bigmodel_key_requests")
        if labels["key"] == "limited"
    }
    assert by_code.get("429", 0) >= 1 and by_code.get("200", 0) >= LIMITED_RPM


def test_errors_are_openai_shaped(serving: ServingStack) -> None:
    with serving.http() as client:
        cases = {
            "unknown route": client.get("/v1/embeddings"),
            "refused route": client.post("/v1/embeddings", json={"model": MODEL, "input": "x"}),
            "tokenize": client.post("/tokenize", json={"model": MODEL, "prompt": "x"}),
            "unknown model": client.post("/v1/completions", json={**COMPLETION, "model": "nope"}),
            "unknown adapter": client.post("/v1/completions", json={**COMPLETION, "model": f"{MODEL}:nope"}),
            "bad json": client.post("/v1/completions", content=b"{", headers={"content-type": "application/json"}),
            "bad field": client.post("/v1/completions", json={**COMPLETION, "max_tokens": -1}),
            "too long": client.post("/v1/completions", json={**COMPLETION, "max_tokens": 100_000}),
            "too large": client.post("/v1/completions", json={**COMPLETION, "prompt": "x" * 2_000_000}),
        }
    for name, response in cases.items():
        assert 400 <= response.status_code < 500, (name, response.status_code, response.text)
        assert set(response.json()["error"]) == ERROR_FIELDS, (name, response.text)
    assert cases["too large"].status_code == 413
    assert cases["unknown adapter"].status_code == 404


def test_metrics_have_engine_and_usage_series(serving: ServingStack) -> None:
    with serving.http() as client:
        client.post("/v1/completions", json=COMPLETION)
        text = serving.metrics()
    names = {family.name for family in text_string_to_metric_families(text)}
    assert {"vllm:num_requests_running", "vllm:kv_cache_usage_perc", "vllm:time_to_first_token_seconds"} <= names
    assert {"bigmodel_key_requests", "bigmodel_key_prompt_tokens", "bigmodel_key_completion_tokens"} <= names
    prompt = {labels["key"]: value for labels, value in _metric_values(text, "bigmodel_key_prompt_tokens")}
    assert prompt["alice"] >= 1


def test_responses_are_charged_to_the_key(serving: ServingStack) -> None:
    """POST /v1/responses counts like chat: the request and its input/output tokens on the key's series."""

    def bobs(family: str) -> float:
        values = _metric_values(serving.metrics(), family)
        return sum(value for labels, value in values if labels.get("key") == "bob")

    before = (bobs("bigmodel_key_prompt_tokens"), bobs("bigmodel_key_completion_tokens"))
    response = serving.openai(key=serving.keys["bob"]).responses.create(model=MODEL, input="Hi", max_output_tokens=3)
    assert response.usage is not None
    expected = (before[0] + response.usage.input_tokens, before[1] + response.usage.output_tokens)
    deadline, seen = time.monotonic() + 15, before
    while time.monotonic() < deadline:  # usage reaches the quota actor within a second or so
        seen = (bobs("bigmodel_key_prompt_tokens"), bobs("bigmodel_key_completion_tokens"))
        if seen[0] >= expected[0] and seen[1] >= expected[1]:
            break
        time.sleep(0.5)
    # At least: an earlier test's usage of the same key may still be on its way to the quota actor.
    assert seen[0] >= expected[0] and seen[1] >= expected[1], (before, expected, seen)


def test_client_disconnect_aborts_the_engine_request(serving: ServingStack) -> None:
    body = {**COMPLETION, "max_tokens": 400, "stream": True, "ignore_eos": True}

    def running() -> float:
        return sum(value for _, value in _metric_values(serving.metrics(), "vllm:num_requests_running"))

    with httpx.Client(base_url=serving.url, timeout=60) as client:
        headers = {"Authorization": f"Bearer {serving.api_key}"}
        with client.stream("POST", "/v1/completions", json=body, headers=headers) as stream:
            lines = stream.iter_lines()
            for _ in range(3):
                next(lines)
            during = running()
        # leaving the block closes the connection mid-stream
    deadline = time.monotonic() + 30
    after = running()
    while after > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        after = running()
    assert during >= 1
    assert after == 0


def test_a_full_engine_queue_is_an_openai_429(serving: ServingStack) -> None:
    """More requests than the engine runs (8) and queues (16): the rest get 429 + Retry-After as JSON."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    # Long enough answers, sent at once (a barrier): the first 24 must still be running or queued when the
    # rest arrive (64 tokens each let a quick engine drain the queue while the threads were still starting).
    body = {**COMPLETION, "max_tokens": 256, "ignore_eos": True}
    calls = 48
    start = threading.Barrier(calls)

    def call(_: int) -> httpx.Response:
        with serving.http() as client:
            start.wait(timeout=60)
            return client.post("/v1/completions", json=body)

    with ThreadPoolExecutor(max_workers=calls) as pool:
        responses = list(pool.map(call, range(calls)))
    statuses = [response.status_code for response in responses]
    others = [(r.status_code, r.text[:300]) for r in responses if r.status_code not in (200, 429)]
    assert not others, (statuses, others[:3])  # Serve's own plain-text 503 showed here (ingress.IngressApp)
    busy = [response for response in responses if response.status_code == 429]
    assert busy, statuses
    assert busy[0].json()["error"]["code"] == "server_busy"
    assert int(busy[0].headers["Retry-After"]) >= 1
