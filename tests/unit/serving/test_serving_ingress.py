"""The ingress without Ray: fail closed until configured, 503 (never 500) when a helper actor fails,
readiness apart from liveness, errors classified by type, metrics sources guarded.

The engine is a stand-in handle (what Ray's router calls); the app is the ingress's own FastAPI app
(guard, routes, error handlers) with the generation routes bound to one `BigModelIngress`.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from fastapi import Request
from fastapi.responses import Response
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from starlette.testclient import TestClient

MODEL = "tiny"
KEY = "sk-unit-alice"


class StubEngine:
    """The engine deployment's handle as Ray's router uses it: `.options(...).<method>.remote(body, raw)`."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.calls = 0

    def options(self, **_: Any) -> StubEngine:
        return self

    def __getattr__(self, method: str) -> StubEngine:
        if method in ("chat", "completions"):
            return self
        raise AttributeError(method)

    def remote(self, body: Any, raw_request: Any = None) -> AsyncIterator[Any]:
        self.calls += 1
        return self._answer(body)

    async def _answer(self, body: Any) -> AsyncIterator[Any]:
        if self.error is not None:
            raise self.error
        head = {"id": "cmpl-unit", "object": "text_completion", "created": 0, "model": body.model}
        usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
        if not body.stream:
            from ray.serve.llm.openai_api_models import CompletionResponse

            choices = [{"index": 0, "text": " hi", "finish_reason": "length"}]
            yield CompletionResponse.model_validate({**head, "choices": choices, "usage": usage})
            return
        yield [f"data: {json.dumps({**head, 'choices': [{'index': 0, 'text': ' hi'}]})}\n\n"]
        if body.stream_options and body.stream_options.include_usage:
            yield [f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n"]
        yield ["data: [DONE]\n\n"]


class _Method:
    def __init__(self, answer: Any) -> None:
        self.answer = answer

    def remote(self, *args: Any) -> Any:
        async def call() -> Any:
            if isinstance(self.answer, BaseException):
                raise self.answer
            if self.answer == "hang":
                await asyncio.sleep(3600)
            return self.answer

        return call()


class FailingQuotaActor:
    """A quota actor that is gone (`error`) or wedged ("hang")."""

    def __init__(self, answer: Any) -> None:
        self.lease = self.settle = self.snapshot = _Method(answer)


@pytest.fixture
def ingress(make_ingress: Callable[..., Any]) -> Any:
    return make_ingress(StubEngine(), model=MODEL, key=KEY, app_name="unit-ingress")


def _configure(ingress: Any, **extra: Any) -> None:
    ingress.reconfigure({"auth": {"mode": "api_keys", "keys_dir": str(ingress.keys_dir)}, **extra})


def _client(ingress: Any) -> TestClient:
    from bigmodel_serving.ingress import create_app

    app = create_app()  # (the request classes are module-level: FastAPI resolves annotations from globals)

    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await ingress.completions(body, request)  # type: ignore[no-any-return]

    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        return await ingress.chat(body, request)  # type: ignore[no-any-return]

    async def models() -> dict[str, Any]:
        return await ingress.models()  # type: ignore[no-any-return]

    app.add_api_route("/v1/completions", completions, methods=["POST"])
    app.add_api_route("/v1/chat/completions", chat, methods=["POST"])
    app.add_api_route("/v1/models", models, methods=["GET"])
    return TestClient(app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {KEY}"})


def _complete(client: TestClient, **body: Any) -> Any:
    return client.post("/v1/completions", json={"model": MODEL, "prompt": "hello", "max_tokens": 2, **body})


def _assert_503(response: Any, code: str) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) >= 1
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("service_unavailable_error", code)


def test_refuses_everything_until_configured_even_without_auth(ingress: Any) -> None:
    client = _client(ingress)
    _assert_503(_complete(client), "not_configured")
    _assert_503(client.get("/v1/models"), "not_configured")
    assert client.get("/health").json() == {"status": "ok"}  # liveness: the replica runs
    _assert_503(client.get("/health/ready"), "not_configured")
    ingress.reconfigure({"auth": {"mode": "none"}})
    assert _complete(client).status_code == 200


def test_answers_once_configured_and_charges_usage(ingress: Any) -> None:
    _configure(ingress)
    client = _client(ingress)
    answer = _complete(client)
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 2
    streamed = _complete(client, stream=True)
    assert streamed.status_code == 200
    assert '"usage"' not in streamed.text and streamed.text.endswith("data: [DONE]\n\n")  # not asked for
    assert _complete(client, stream=True, stream_options={"include_usage": True}).text.count('"usage"') == 1
    usage = ingress._actor()._usage["alice"].as_dict()
    assert usage["completion_tokens"] == 6 and usage["responses"] == {200: 3}
    assert client.get("/v1/models").json()["data"][0]["id"] == MODEL
    assert client.post("/v1/completions", json={"model": "other", "prompt": "x"}).status_code == 404


@pytest.mark.parametrize("failure", [RuntimeError("ActorDiedError: the quota actor died"), "hang"])
def test_a_failing_quota_actor_is_a_503_with_retry_after(
    ingress: Any, failure: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bigmodel_serving import actor_calls
    from bigmodel_serving.quota_leases import QuotaLeases

    monkeypatch.setattr(actor_calls, "REQUEST_PATH_TIMEOUT_S", 0.2)
    _configure(ingress, quotas={"default": {"requests_per_minute": 10}})  # no lease: every request asks
    looked_up = []

    def actor() -> FailingQuotaActor:
        looked_up.append(1)
        return FailingQuotaActor(failure)

    ingress._quota_leases = QuotaLeases(actor, flush_interval_s=None)
    client = _client(ingress)
    for _ in range(3):
        _assert_503(_complete(client), "dependency_unavailable")
    assert len(looked_up) == 3  # a failed call drops the handle: the next request looks the actor up again
    metrics = asyncio.run(ingress.app_metrics())
    assert metrics["sources"] == {"quota": False, "canary": True}
    assert "bigmodel_key_requests_total" not in metrics["text"]


def test_readiness_needs_a_running_engine_replica(ingress: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from bigmodel_serving import ingress as ingress_module

    running = {"n": 0}
    monkeypatch.setattr(ingress_module, "_running_engine_replicas", lambda app_name: running["n"])
    monkeypatch.setattr(ingress_module, "ENGINE_STATE_TTL_S", 0.0)
    _configure(ingress)
    client = _client(ingress)
    _assert_503(client.get("/health/ready"), "engine_not_ready")
    running["n"] = 2
    assert client.get("/health/ready").json() == {"status": "ready", "engine_replicas": 2}

    def broken(app_name: str) -> int:
        raise RuntimeError("the controller is gone")

    monkeypatch.setattr(ingress_module, "_running_engine_replicas", broken)
    _assert_503(client.get("/health/ready"), "engine_not_ready")


def test_router_errors_are_answered_by_type(ingress: Any) -> None:
    from ray.serve.exceptions import BackPressureError

    from bigmodel_serving.ray_internals import OpenAIHTTPException

    _configure(ingress)
    client = _client(ingress)
    for error, status in (
        (BackPressureError(num_queued_requests=5, max_queued_requests=4), 429),
        (OpenAIHTTPException(503, "engine dead"), 503),
        # The engine's full queue as Ray's router reports it (an ErrorResponse typed by the exception's class).
        (OpenAIHTTPException(503, "queue full", type="BackPressureError"), 429),
        (OpenAIHTTPException(400, "bad temperature"), 400),
        (RuntimeError("boom"), 500),
        (ValueError("raised after the body was parsed"), 500),  # not the client's fault
    ):
        ingress.engine_stub.error = error
        answer = _complete(client)
        assert answer.status_code == status, (error, answer.text)
        assert set(answer.json()["error"]) == {"message", "type", "param", "code"}
        if status in (429, 503):
            assert answer.headers["Retry-After"]


def test_serve_cannot_replace_our_handlers_for_its_errors(ingress: Any) -> None:
    """Serve's replica adds plain-text 503 handlers for BackPressureError and DeploymentUnavailableError to a
    FastAPI ingress after it is built (what made a full engine queue a plain-text 503 instead of our 429 on real
    Serve, tests/integration/serving/test_serving_guard.py); ours stay."""
    from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
    from starlette.responses import PlainTextResponse

    _configure(ingress)
    client = _client(ingress)
    for error_class in (BackPressureError, DeploymentUnavailableError):  # what Serve's replica does
        client.app.add_exception_handler(error_class, lambda *_: PlainTextResponse("dropped", status_code=503))  # type: ignore[attr-defined]
    ingress.engine_stub.error = BackPressureError(num_queued_requests=5, max_queued_requests=4)
    answer = _complete(client)
    assert answer.status_code == 429, answer.text
    assert answer.json()["error"]["code"] == "server_busy" and answer.headers["Retry-After"]


def test_type_and_value_errors_are_400_only_before_the_handler() -> None:
    from bigmodel_serving.actor_calls import DependencyUnavailableError
    from bigmodel_serving.error_mapping import translate_exception

    assert translate_exception(TypeError("odd input"), in_handler=False).status == 400
    assert translate_exception(ValueError("odd input"), in_handler=False).status == 400
    assert translate_exception(TypeError("a bug"), in_handler=True).status == 500
    unavailable = translate_exception(DependencyUnavailableError("quota service", TimeoutError()))
    assert (unavailable.status, unavailable.code, unavailable.headers["Retry-After"]) == (
        503,
        "dependency_unavailable",
        "2",
    )


# ---- the metrics deployment ----


class _Broadcast:
    def __init__(self, replies: Any) -> None:
        self.replies = replies

    async def results_async(self, **_: Any) -> list[Any]:
        if isinstance(self.replies, BaseException):
            raise self.replies
        return list(self.replies)


class _EngineHandle:
    def __init__(self, replies: Any) -> None:
        self.replies = replies

    def broadcast(self, method: str) -> _Broadcast:
        assert method == "metrics_snapshot"
        if isinstance(self.replies, BaseException):
            return _Broadcast(self.replies)
        snapshots = [
            {"replica": f"replica-{index}", "text": reply} if isinstance(reply, str) else reply
            for index, reply in enumerate(self.replies)
        ]
        return _Broadcast(snapshots)


class _IngressHandle:
    def __init__(self, answer: Any) -> None:
        self.app_metrics = _Method(answer)


VLLM_TEXT = (
    "# HELP vllm:num_requests_running Running.\n# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running 1\n"
)
APP_TEXT = "# HELP bigmodel_key_requests_total R.\n# TYPE bigmodel_key_requests_total counter\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("engine", "app", "up"),
    [
        (
            [VLLM_TEXT, VLLM_TEXT],
            {"text": APP_TEXT, "sources": {"quota": True}},
            {"engine": 1, "ingress": 1, "quota": 1},
        ),
        ([VLLM_TEXT, RuntimeError("replica died")], RuntimeError("no ingress"), {"engine": 0, "ingress": 0}),
        (TimeoutError(), {"text": "", "sources": {"quota": False}}, {"engine": 0, "ingress": 1, "quota": 0}),
    ],
)
def test_metrics_serve_what_answers(engine: Any, app: Any, up: dict[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    import aiohttp
    from prometheus_client.parser import text_string_to_metric_families
    from ray import serve

    from bigmodel_serving.metrics_server import BigModelMetrics

    monkeypatch.setattr(serve, "get_deployment_handle", lambda name, app_name: _IngressHandle(app))
    port = _free_port()

    async def scenario() -> str:
        server = BigModelMetrics.__new__(BigModelMetrics)
        await BigModelMetrics.__init__(server, _EngineHandle(engine), host="127.0.0.1", port=port, app_name="unit")
        try:
            async with aiohttp.ClientSession() as session, session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                return await response.text()
        finally:
            await server.__del__()

    text = asyncio.run(scenario())
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert {
        labels[0][1]: int(value) for (name, labels), value in samples.items() if name == "bigmodel_metrics_source_up"
    } == up
    if not isinstance(engine, BaseException):  # the replicas that answered are served
        assert samples[("vllm:num_requests_running", (("replica", "replica-0"),))] == 1  # the Serve replica id


def test_a_taken_metrics_port_does_not_fail_the_replica(monkeypatch: pytest.MonkeyPatch) -> None:
    from bigmodel_serving import metrics_server
    from bigmodel_serving.metrics_server import BigModelMetrics

    monkeypatch.setattr(metrics_server, "BIND_RETRY_S", 0.05)

    async def scenario() -> None:
        server = BigModelMetrics.__new__(BigModelMetrics)
        with socket.socket() as taken:  # held by something else (without SO_REUSEPORT)
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            await BigModelMetrics.__init__(server, _EngineHandle([]), host="127.0.0.1", port=port, app_name="unit")
            assert server._runner is None
            await server.check_health()
        for _ in range(100):  # freed: the replica binds it on its own
            await asyncio.sleep(0.05)
            if server._runner is not None:
                break
        assert server._runner is not None
        await server.__del__()

    asyncio.run(scenario())


def test_a_new_engine_router_renews_the_engine_handles(ingress: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve builds a handle's request router once: a routing-policy edit must give the ingress new handles."""
    from types import SimpleNamespace

    from ray import serve

    router = "bigmodel_serving.routing:AdapterAffinePrefixRouter"
    fresh = StubEngine()
    asked: list[tuple[str, str]] = []

    def handle(name: str, app_name: str) -> StubEngine:
        asked.append((name, app_name))
        return fresh

    monkeypatch.setattr(serve, "get_replica_context", lambda: SimpleNamespace(app_name="unit-ingress"))
    monkeypatch.setattr(serve, "get_deployment_handle", handle)
    _configure(ingress)
    client = _client(ingress)
    assert _complete(client).status_code == 200 and ingress.engine_stub.calls == 1
    _configure(ingress)  # the same router: the same handles
    assert asked == []
    _configure(ingress, engine_router=router)
    assert asked == [("BigModelEngine", "unit-ingress")]
    assert _complete(client).status_code == 200
    assert (ingress.engine_stub.calls, fresh.calls) == (1, 1)  # Ray's router now calls the new handle
