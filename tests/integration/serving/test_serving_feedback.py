"""POST /v1/feedback on real Ray Serve + vLLM: ids from real answers, per-key ownership, the JSONL sink.

The session's ingress has feedback on with a sink directory (conftest.py); each test reads the
records its own completion ids produced, so the tests do not depend on each other's order.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import ADAPTER, MODEL, ServingStack

EMAIL = "jane.doe@example.com"
ERROR_FIELDS = {"message", "type", "param", "code"}


def _records(serving: ServingStack, completion_id: str) -> list[dict[str, Any]]:
    assert serving.feedback_dir is not None
    found = []
    for path in sorted(serving.feedback_dir.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            record = json.loads(line)
            if record["id"] == completion_id:
                found.append(record)
    return found


def _chat(client: httpx.Client, content: str, model: str = MODEL) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_an_unknown_id_is_a_404_with_an_openai_body(serving: ServingStack) -> None:
    with serving.http() as client:
        response = client.post("/v1/feedback", json={"id": "chatcmpl-never-answered", "rating": 5})
    assert response.status_code == 404
    error = response.json()["error"]
    assert set(error) == ERROR_FIELDS
    assert (error["type"], error["code"], error["param"]) == ("not_found_error", "completion_not_found", "id")


def test_feedback_on_a_chat_answer_is_recorded_redacted(serving: ServingStack) -> None:
    with serving.http() as alice:
        answer = _chat(alice, f"Reset the password of {EMAIL}, please")
        completion_id = answer["id"]
        assert completion_id.startswith("chatcmpl-")
        body = {"id": completion_id, "rating": 2, "correction": f"I sent a reset link to {EMAIL}."}
        response = alice.post("/v1/feedback", json=body)
    assert response.status_code == 200, response.text
    assert response.json() == {"id": completion_id, "object": "feedback", "status": "recorded"}
    [record] = _records(serving, completion_id)
    assert set(record) >= {"messages", "rating", "correction", "model", "key", "id", "ts"}
    assert [m["role"] for m in record["messages"]] == ["user", "assistant"]
    assert record["messages"][1]["content"] == answer["choices"][0]["message"]["content"]
    assert (record["rating"], record["model"], record["key"]) == (2, MODEL, "alice")
    assert EMAIL not in json.dumps(record)
    assert "[EMAIL]" in record["messages"][0]["content"] and "[EMAIL]" in record["correction"]


def test_another_keys_id_is_a_404_and_nothing_is_written(serving: ServingStack) -> None:
    with serving.http() as alice, serving.http(key=serving.keys["bob"]) as bob:
        completion_id = _chat(alice, "Only alice may rate this")["id"]
        stolen = bob.post("/v1/feedback", json={"id": completion_id, "rating": 1})
        assert stolen.status_code == 404
        assert stolen.json()["error"]["code"] == "completion_not_found"
        assert _records(serving, completion_id) == []
        assert alice.post("/v1/feedback", json={"id": completion_id, "rating": 5}).status_code == 200
    assert [r["key"] for r in _records(serving, completion_id)] == ["alice"]


def test_streamed_chat_and_completions_answers_take_feedback(serving: ServingStack) -> None:
    client = serving.openai()
    stream = client.chat.completions.create(
        model=f"{MODEL}:{ADAPTER}", messages=[{"role": "user", "content": "Stream a little"}], max_tokens=4, stream=True
    )
    chunks = list(stream)
    streamed_id = chunks[0].id
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    completion = client.completions.create(model=MODEL, prompt="Once upon", max_tokens=3)
    assert completion.id.startswith("cmpl-")
    with serving.http() as alice:
        for completion_id in (streamed_id, completion.id):
            response = alice.post("/v1/feedback", json={"id": completion_id, "rating": 4})
            assert response.status_code == 200, response.text
    [streamed] = _records(serving, streamed_id)
    assert streamed["model"] == f"{MODEL}:{ADAPTER}"
    assert streamed["messages"][-1] == {"role": "assistant", "content": text}
    [prompted] = _records(serving, completion.id)
    assert prompted["messages"] == [
        {"role": "user", "content": "Once upon"},
        {"role": "assistant", "content": completion.choices[0].text},
    ]


@pytest.mark.parametrize(
    "body",
    [{"id": "x", "rating": 9}, {"id": "x", "rating": "5"}, {"rating": 3}, {"id": "x", "rating": 3, "extra": 1}, []],
)
def test_a_bad_body_is_a_400(serving: ServingStack, body: Any) -> None:
    with serving.http() as client:
        response = client.post("/v1/feedback", json=body)
    assert response.status_code == 400
    assert set(response.json()["error"]) == ERROR_FIELDS


def test_feedback_needs_a_key_and_shows_in_metrics(serving: ServingStack) -> None:
    with serving.http(key="") as anonymous:
        assert anonymous.post("/v1/feedback", json={"id": "x", "rating": 3}).status_code == 401
    with serving.http() as alice:
        completion_id = _chat(alice, "Rate me")["id"]
        assert alice.post("/v1/feedback", json={"id": completion_id, "rating": 3}).status_code == 200
        metrics = serving.metrics()
    families = {family.name: family for family in text_string_to_metric_families(metrics)}
    totals = {s.labels["model"]: s.value for s in families["bigmodel_feedback"].samples}
    assert totals.get(MODEL, 0) >= 1


def test_killing_the_feedback_store_mid_traffic_loses_no_feedback(serving: ServingStack) -> None:
    """The store's actor dies while answers and feedback flow: every answer is in a journal, every feedback
    is recorded (Ray restarts the actor, which configures itself from the next call and reads the journals
    back); no valid feedback gets anything but 200."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import ray

    from bigmodel_serving import feedback

    with serving.http() as alice:
        before = [_chat(alice, f"Question {n} before")["id"] for n in range(20)]
    name = feedback.actor_name(serving.application["name"])
    statuses: list[int] = []
    lock = threading.Lock()

    def rate(completion_id: str) -> None:
        with serving.http() as client:
            response = client.post("/v1/feedback", json={"id": completion_id, "rating": 1, "correction": "Better."})
        with lock:
            statuses.append(response.status_code)

    during: list[str] = []
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(rate, completion_id) for completion_id in before[:8]]
        ray.kill(ray.get_actor(name, namespace=feedback.ACTOR_NAMESPACE), no_restart=False)
        futures += [pool.submit(rate, completion_id) for completion_id in before[8:]]
        with serving.http() as alice:  # answered while the store restarts: journaled all the same
            during = [_chat(alice, f"Question {n} during")["id"] for n in range(5)]
        futures += [pool.submit(rate, completion_id) for completion_id in during]
        for future in futures:
            future.result()
    assert statuses == [200] * len(before + during), statuses
    lost = [completion_id for completion_id in before + during if not _records(serving, completion_id)]
    assert lost == []
    print(f"\n[feedback] store killed mid-traffic: {len(statuses)} feedback posts, all 200, 0 lost")
