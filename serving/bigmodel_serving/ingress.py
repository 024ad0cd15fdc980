"""The ingress deployment: Ray Serve LLM's OpenAI router (`ray.serve.llm.ingress.OpenAiIngress`) behind our guard.

Routes (an allowlist of Ray's OpenAI routes, plus ours):

    GET  /v1/models, GET /v1/models/{id}   the base model, its adapters and routes (key)
    GET  /v1/routes                        canary routes: versions, weight, signals, decision (key)
    POST /v1/chat/completions              vLLM's chat completions              (key, quota)
    POST /v1/completions                   vLLM's completions                   (key, quota)
    POST /v1/responses                     vLLM's Responses API, stateless      (key, quota)
    POST /v1/feedback                      a rating of an answered completion   (key)
    GET  /health                           liveness: 200 while this replica runs (no key)
    GET  /health/ready                     readiness: 200 once configured and an engine replica runs,
                                           else 503 + Retry-After (no key)

Everything else answers 404 (Ray's /v1/embeddings, /tokenize, /v1/audio/..., /v1/score and FastAPI's
/docs are refused on purpose). Metrics are not served here: the metrics deployment (metrics_server.py)
serves them on a port of its own, which the Ingress and the Serve Service do not expose.

Until Serve delivers the first `user_config` (`reconfigure`) every /v1 request gets 503 + Retry-After:
the replica knows neither keys nor quotas yet. Every error, ours, vLLM's or Ray's, has an OpenAI-style body
(error_mapping.py); a helper actor that fails (quota, feedback) is a 503 + Retry-After, never a 500.

Generation goes through Ray's public `chat`/`completions` (Responses, which Ray does not route, through
the engine's handle: responses_api.py); we choose the version (adapters, canary routes)
before and watch the answer after (answer_watch.py). The guard is a plain ASGI middleware, so streamed
answers pass through it untouched; a client that disconnects cancels the request down to the engine,
where vLLM aborts it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
from ray.serve.llm.openai_api_models import ChatCompletionRequest, CompletionRequest
from starlette.exceptions import HTTPException as StarletteHTTPException
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.exceptions import VLLMError

from bigmodel_serving import error_mapping
from bigmodel_serving.actor_calls import DependencyUnavailableError
from bigmodel_serving.answer_watch import AnswerWatch
from bigmodel_serving.args import ENGINE_DEPLOYMENT, IngressConfig, Quota, parse_ingress_config
from bigmodel_serving.auth import ApiKeyStore, bearer_token
from bigmodel_serving.canary import CanaryRouter, replica_app_name
from bigmodel_serving.errors import (
    APIError,
    body_too_large,
    model_not_found,
    not_configured,
    quota_exceeded,
    unauthorized,
    unavailable,
)
from bigmodel_serving.feedback import FeedbackClient, conversation_of, feedback_actor, feedback_disabled
from bigmodel_serving.ingress_guard import (
    ANONYMOUS,
    CALLED_MODEL_SCOPE,
    ENDPOINT_SCOPE,
    KEY_SCOPE,
    MODEL_SCOPE,
    GuardMiddleware,
    Scope,
    header,
    register,
    replica_ingress,
)
from bigmodel_serving.messages import check_messages
from bigmodel_serving.metrics import render_usage
from bigmodel_serving.quota import quota_actor, retry_after_header
from bigmodel_serving.quota_leases import QuotaLeases
from bigmodel_serving.ray_internals import replace_engine_handles
from bigmodel_serving.request_log import RequestLogger
from bigmodel_serving.responses_api import ingress_answer, input_of
from bigmodel_serving.startup_report import report_target
from bigmodel_serving.usage_report import BusyClock
from bigmodel_serving.wake import WAKE_TIMEOUT_DEFAULT_S, within_wake_bound

logger = logging.getLogger("ray.serve")

ENGINE_STATE_TTL_S = 2.0  # readiness asks Serve for the engine's replicas at most this often
ENGINE_STATE_TIMEOUT_S = 5.0
# Ray's OpenAI routes we serve (method name on OpenAiIngress -> route); the rest stay unrouted.
ENDPOINTS: dict[str, Callable[[FastAPI], Callable[..., Any]]] = {
    "models": lambda app: app.get("/v1/models"),
    "model_data": lambda app: app.get("/v1/models/{model:path}"),
    "completions": lambda app: app.post("/v1/completions"),
    "chat": lambda app: app.post("/v1/chat/completions"),
    "responses": lambda app: app.post("/v1/responses"),
}


def current_ingress() -> BigModelIngress:
    """This replica's configured ingress (routes that need it run behind the guard, which checked)."""
    ingress = replica_ingress()
    if not isinstance(ingress, BigModelIngress) or ingress.config is None:
        raise not_configured()
    return ingress


# Route handlers are module-level functions: Serve pickles the app, and module-level functions travel
# by reference, so they see this module's replica in the replica process.


async def health() -> Response:
    """Liveness: this replica's event loop answers."""
    return JSONResponse({"status": "ok"})


async def ready() -> Response:
    """Readiness: configured, and the engine deployment has a running replica (asked of Serve, not the engine)."""
    running = await current_ingress().engine_replicas()
    if not running:
        raise unavailable("The engine is not ready: no engine replica is running yet.", code="engine_not_ready")
    return JSONResponse({"status": "ready", "engine_replicas": running})


async def feedback(request: Request) -> Response:
    """POST /v1/feedback (the guard authenticated the key): see bigmodel_serving.feedback."""
    request.scope[ENDPOINT_SCOPE] = True
    client = current_ingress().feedback
    if client is None:
        raise feedback_disabled()
    return JSONResponse(await client.submit(str(request.scope.get(KEY_SCOPE, ANONYMOUS)), await request.body()))


async def routes() -> Response:
    """GET /v1/routes (the guard authenticated the key): each canary route's versions, weight and decision."""
    return JSONResponse({"object": "list", "data": await current_ingress().canary.view()})


_SERVE_ERRORS = (BackPressureError, DeploymentUnavailableError)


class IngressApp(FastAPI):
    """FastAPI whose handlers for Serve's own errors stay ours once set. Serve's replica gives every FastAPI
    ingress its own handlers for BackPressureError and DeploymentUnavailableError after the app is built
    (ray.serve's replica.py: "FastAPI doesn't know how to handle it"), plain-text 503s that would replace our
    OpenAI-style answers: a full engine queue is 429 + Retry-After with a JSON body (error_mapping.py), as
    OpenAI's clients expect."""

    def add_exception_handler(self, exc_class_or_status_code: Any, handler: Any) -> None:
        if exc_class_or_status_code in _SERVE_ERRORS and exc_class_or_status_code in self.exception_handlers:
            return  # ours came first
        super().add_exception_handler(exc_class_or_status_code, handler)


def create_app() -> FastAPI:
    """The FastAPI app of the ingress: our guard, OpenAI-style errors, /health."""
    app = IngressApp(title="BigModel", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/health/ready", ready, methods=["GET"])
    app.add_api_route("/v1/routes", routes, methods=["GET"])
    app.add_api_route("/v1/feedback", feedback, methods=["POST"])
    app.add_exception_handler(APIError, error_mapping.api_error)
    app.add_exception_handler(error_mapping.OpenAIHTTPException, error_mapping.api_error)
    app.add_exception_handler(RequestValidationError, error_mapping.invalid_request)
    app.add_exception_handler(StarletteHTTPException, error_mapping.http_error)
    # Handlers for these classes answer without re-raising (the catch-all re-raises into Serve's log).
    for error_class in (
        VLLMError,
        ValueError,
        TypeError,
        BackPressureError,
        DeploymentUnavailableError,
        DependencyUnavailableError,
    ):
        app.add_exception_handler(error_class, error_mapping.api_error)
    app.add_exception_handler(Exception, error_mapping.api_error)
    app.add_middleware(GuardMiddleware)
    return app


class BigModelIngress(OpenAiIngress):
    """Ray Serve LLM's OpenAI router, with adapters, keys, quotas and the request log from user_config."""

    def __init__(
        self,
        llm_deployments: dict[str, Any],
        model_cards: dict[str, dict[str, Any]],
        *,
        lora_paths: dict[str, str] | None = None,
        app_name: str | None = None,
        metrics_server: Any = None,  # bound so Serve deploys it with the application; not called from here
    ) -> None:
        super().__init__(llm_deployments, cast(Any, model_cards), lora_paths=None)
        self._engine = llm_deployments[next(iter(model_cards))]  # the engine deployment's handle
        self._engine_handles: dict[str, Any] = {}  # per model: streaming, multiplexed for an adapter
        self.app_name = replica_app_name(app_name or "default")
        self.base_model = next(iter(model_cards))
        self.cards = dict(model_cards)
        self.canary = CanaryRouter(self.app_name, self.base_model)
        self.config: IngressConfig | None = None  # refuse everything until Serve calls reconfigure
        self.key_store: ApiKeyStore | None = None
        self.request_log: RequestLogger | None = None
        self.feedback: FeedbackClient | None = None
        self._quota_leases: QuotaLeases | None = None
        self._engine_state: tuple[float, int] = (0.0, 0)
        self._usage_reported = False
        register(self)

    # ---- configuration (Serve calls reconfigure at start and on every user_config change) ----

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = parse_ingress_config(user_config)
        keys_dir = config.auth.keys_dir if config.auth.mode == "api_keys" else None
        if keys_dir is None:
            self.key_store = None
        elif self.key_store is None or str(self.key_store.directory) != keys_dir:
            self.key_store = ApiKeyStore(keys_dir)
        if self.config is None or config.request_log != self.config.request_log or self.request_log is None:
            self.request_log = RequestLogger.from_args(config.request_log)
        self.canary.configure(config.routes, config.rollout_report, config.feedback)
        self._configure_feedback(config)
        if config.quotas.enabled:
            self._start_quota_actor()
        if self.config is not None and config.engine_router != self.config.engine_router:
            self._renew_engine_handles(config.engine_router)  # the first config names the handles' router
        self.config = config
        self._report_usage()
        logger.info(
            "bigmodel: auth %s, quotas %s, adapters %s",
            config.auth.mode,
            "on" if config.quotas.enabled else "off",
            ", ".join(adapter.name for adapter in config.adapters) or "none",
        )

    def _start_quota_actor(self) -> None:
        """Create (or find) the quota actor now, not at the first request that needs it: a new detached actor is
        a new worker process, seconds on a busy node, longer than a request waits for it (that request got a
        503). Creation goes on in Ray while this returns; outside Ray (unit tests) there is nothing to start."""
        import ray

        if not ray.is_initialized():
            return
        try:
            self._actor().actor()
        except Exception as error:  # the first request looks it up again (and answers 503 if it still fails)
            logger.warning("bigmodel: the quota actor could not be started yet: %r", error)

    def _renew_engine_handles(self, router: str | None) -> None:
        """New handles to the engine deployment: Serve builds a handle's request router on its first request
        and never swaps it, so a new routing policy (the engine's request_router_config) needs new handles."""
        try:
            app_name = serve.get_replica_context().app_name
        except Exception:
            return  # not in a Serve replica (unit tests): there are no routers to renew
        engine = serve.get_deployment_handle(ENGINE_DEPLOYMENT, app_name=app_name)
        self._engine = engine
        self._engine_handles.clear()
        replace_engine_handles(self, engine)
        logger.info("bigmodel: engine request router now %s", router or "Serve's default")

    def _configure_feedback(self, config: IngressConfig) -> None:
        if self.feedback is not None and self.feedback.args == config.feedback:
            return
        if config.feedback.enabled or self.feedback is not None:  # a disabled actor forgets nothing new
            client = FeedbackClient(config.feedback, feedback_actor(self.app_name))
            self.feedback = client if config.feedback.enabled else None

    def _configured(self) -> IngressConfig:
        if self.config is None:
            raise not_configured()
        return self.config

    # ---- guard hooks ----

    def authenticate(self, scope: Scope) -> str:
        """The key's name, or ANONYMOUS when auth is off; raises a 401 APIError (503 before configuration)."""
        config = self._configured()
        if config.auth.mode == "none" or self.key_store is None:
            return ANONYMOUS
        token = bearer_token(header(scope, b"authorization"))
        if token is None:
            raise unauthorized("Missing API key.")
        name = self.key_store.name_of(token)
        if name is None:
            raise unauthorized("Incorrect API key provided.")
        return name

    def check_declared_length(self, scope: Scope) -> None:
        length = header(scope, b"content-length")
        if length is None:
            return
        if not length.isdigit():
            raise APIError(400, "Invalid Content-Length header.", code="invalid_header")
        limit = self._configured().max_body_bytes
        if int(length) > limit:
            raise body_too_large(limit)

    def _quota(self, key: str) -> Quota:
        return self._configured().quotas.for_key(key)

    def _actor(self) -> QuotaLeases:
        """This replica's leases of the quota actor's buckets (the actor is looked up on first need)."""
        if self._quota_leases is None:
            self._quota_leases = QuotaLeases(lambda: quota_actor(self.app_name))
        return self._quota_leases

    async def admit(self, key: str) -> None:
        """Admit from this replica's lease; only an empty lease waits for the quota actor (503 if it fails)."""
        try:
            wait = await self._actor().admit(key, self._quota(key))
        except DependencyUnavailableError as error:
            raise error_mapping.translate_exception(error) from None
        if wait > 0:
            raise quota_exceeded(key, retry_after_header(wait))

    def record(
        self, key: str, status: int, prompt_tokens: int, completion_tokens: int, model: str | None = None
    ) -> None:
        """Charge the lease and count usage locally (by key, and by model for the cost); both reach the quota
        actor within a second."""
        if self.config is None:
            return
        try:
            self._actor().record(key, self._quota(key), status, prompt_tokens, completion_tokens, model)
        except Exception:  # usage is best effort; the answer already went out
            logger.exception("bigmodel: could not record usage")

    @property
    def busy(self) -> BusyClock:
        """When this replica has generation requests in flight (the guard enters and exits it)."""
        return self._actor().busy

    def _report_usage(self) -> None:
        """Once per replica: tell the quota actor which BigModel's status.usage it reports to (in a cluster)."""
        if self._usage_reported:
            return
        self._usage_reported = True
        try:
            target = report_target(self.app_name)
            if target is not None:
                self._actor().actor().report_usage_to.remote(*target)
        except Exception as error:  # cost accounting is best effort; serving goes on
            logger.warning("bigmodel: usage will not be reported: %r", error)

    # ---- readiness and metrics ----

    async def engine_replicas(self) -> int:
        """Running replicas of the engine deployment, from Serve's status (cached for a moment)."""
        checked, running = self._engine_state
        if time.monotonic() - checked < ENGINE_STATE_TTL_S:
            return running
        try:
            asking = asyncio.to_thread(_running_engine_replicas, self.app_name)
            running = await asyncio.wait_for(asking, ENGINE_STATE_TIMEOUT_S)
        except Exception as error:  # Serve's controller did not answer: not ready, as far as we know
            logger.warning("bigmodel: engine state unavailable: %r", error)
            running = 0
        self._engine_state = (time.monotonic(), running)
        return running

    async def app_metrics(self) -> dict[str, Any]:
        """The application's own families (per-key usage, canary routes, feedback), each source guarded:
        {"text": exposition, "sources": {name: up}}; the metrics deployment adds vLLM's and serves them."""
        parts, sources = [], {}
        collectors: dict[str, Callable[[], Any]] = {"quota": self._usage_text, "canary": self.canary.metrics_text}
        if self.feedback is not None:
            collectors["feedback"] = self.feedback.metrics_text
        for name, collect in collectors.items():
            try:
                parts.append(await collect())
                sources[name] = True
            except Exception as error:  # one failing source never takes the others down
                logger.warning("bigmodel: metrics source %s unavailable: %r", name, error)
                sources[name] = False
        return {"text": "".join(parts), "sources": sources}

    async def _usage_text(self) -> str:
        return render_usage(await self._actor().snapshot())

    # ---- models ----

    def _adapter_ids(self) -> list[str]:
        adapters = self.config.adapters if self.config is not None else []
        return [f"{self.base_model}:{adapter.name}" for adapter in adapters] + self.canary.model_ids()

    async def model(self, model_id: str) -> dict[str, Any] | None:  # type: ignore[override]
        if model_id in self.cards:
            return self.cards[model_id]
        if model_id in self._adapter_ids():
            base = self.cards[self.base_model]
            metadata = {**base.get("metadata", {}), "base_model_id": self.base_model}
            return {**base, "id": model_id, "permission": list(base.get("permission", [])), "metadata": metadata}
        return None

    async def models(self) -> dict[str, Any]:  # type: ignore[override]
        cards = [await self.model(model_id) for model_id in [self.base_model, *self._adapter_ids()]]
        return {"object": "list", "data": [card for card in cards if card is not None]}

    async def model_data(self, model: str) -> dict[str, Any]:  # type: ignore[override]
        card = await self.model(model)
        if card is None:
            raise model_not_found(model)
        return card

    # ---- generation ----

    # Annotated with ray.serve.llm's public request classes (subclasses of the ones Ray's router declares):
    # FastAPI parses the body into them.
    async def chat(self, body: ChatCompletionRequest, request: Request) -> Response:  # type: ignore[override]
        request.scope[ENDPOINT_SCOPE] = True  # the body parsed: what fails from here on is not the body
        return await self._generate(body, request, "chat")

    async def completions(self, body: CompletionRequest, request: Request) -> Response:  # type: ignore[override]
        request.scope[ENDPOINT_SCOPE] = True
        return await self._generate(body, request, "completions")

    async def responses(self, body: ResponsesRequest, request: Request) -> Response:
        request.scope[ENDPOINT_SCOPE] = True
        return await self._generate(body, request, "responses")

    def _engine_handle(self, model: str) -> Any:
        """The engine deployment's streaming handle for `model` (an adapter's is multiplexed to it, so Serve
        prefers replicas that hold the adapter, as Ray's router does for chat)."""
        if model not in self._engine_handles:
            options: dict[str, Any] = {"stream": True}
            if model != self.base_model:
                options["multiplexed_model_id"] = model
            self._engine_handles[model] = self._engine.options(**options)
        return self._engine_handles[model]

    async def _answer_responses(self, body: Any, request: Request) -> Response:
        # The JSON, not the validated request: some of its input items hold iterators Ray cannot serialise.
        data = json.loads(await request.body())  # not request.json(): vLLM's validation edited that one
        if not isinstance(data, dict):
            raise APIError(400, "The request body must be a JSON object.")
        data["model"] = body.model
        return await ingress_answer(self._engine_handle(str(body.model)), data)

    async def _generate(self, body: Any, request: Request, method: str) -> Response:
        """Choose the version, ask Ray's router (`OpenAiIngress.chat`/`completions`; Responses through the
        engine's handle), watch the answer."""
        responses = method == "responses"
        answer: Callable[[Any, Request], Any] = self._answer_responses if responses else getattr(super(), method)
        requested = body.model or self.base_model
        key = str(request.scope.get(KEY_SCOPE, ANONYMOUS))
        choice = self.canary.choose(requested, key)  # a canary route: the version this key gets
        model = choice.engine_model if choice is not None else requested
        if model != self.base_model and model not in self._adapter_ids():
            raise model_not_found(model)
        request.scope[CALLED_MODEL_SCOPE] = requested
        body.model = model
        if isinstance(body, ChatCompletionRequest):
            check_messages(body.messages)
        strip_usage = False
        if (
            not responses  # a Responses stream's last event carries the usage anyway
            and getattr(body, "stream", False)
            and not (body.stream_options and body.stream_options.include_usage)
        ):
            # Usage is needed for token quotas and metrics; the extra chunk is not passed on.
            from vllm.entrypoints.generate.base.protocol import StreamOptions

            body.stream_options = StreamOptions(include_usage=True)
            strip_usage = True

        def status_of(error: BaseException) -> int:
            return error_mapping.translate_exception(error).status

        async def open_version(engine_model: str) -> Any:
            body.model = engine_model
            request.scope[MODEL_SCOPE] = engine_model
            return await answer(body, request)

        opened = None
        try:
            # At zero engine replicas Serve holds the call while one starts; the wake bound ends the wait.
            bound = self.config.wake_timeout_s if self.config is not None else WAKE_TIMEOUT_DEFAULT_S
            if choice is None:
                response = await within_wake_bound(answer(body, request), bound, self.engine_replicas)
            else:
                opening = self.canary.open(choice, open_version, status_of)
                opened = await within_wake_bound(opening, bound, self.engine_replicas)
                response = opened.answer
        except Exception:
            await self._log(body, key, [], {})
            raise
        watch = AnswerWatch(
            request.scope,
            strip_usage=strip_usage,
            remember=None if responses else self._rememberer(body, key),  # feedback rates completion ids
            log=lambda texts, usage: self._log(body, key, texts, usage),
            canary=self.canary if opened is not None else None,
            opened=opened,
            status_of=status_of,
        )
        return await watch.watch(response)

    def _rememberer(self, body: Any, key: str) -> Callable[[str | None, str], Awaitable[None]] | None:
        """What journals an answered completion for feedback (returns once it is durable, feedback.py), or
        None without feedback."""
        feedback = self.feedback
        if feedback is None:
            return None
        if isinstance(body, ChatCompletionRequest):
            conversation = conversation_of(messages=body.messages)
        else:
            conversation = conversation_of(prompt=body.prompt)

        async def remember(completion_id: str | None, answer: str) -> None:
            await feedback.remember(completion_id, key, str(body.model), conversation, answer)

        return remember

    async def _log(self, body: Any, key: str, texts: list[str], usage: dict[str, Any]) -> None:
        if self.request_log is None:
            return
        record: dict[str, Any] = {
            "request_id": getattr(body, "request_id", None),
            "key": key,
            "model": body.model,
            "usage": usage,
            "completions": texts,
        }
        if isinstance(body, ChatCompletionRequest):
            record["messages"] = [
                {"role": message.get("role"), "content": message.get("content")}
                for message in (body.messages or [])
                if isinstance(message, dict)
            ]
        elif isinstance(body, ResponsesRequest):
            record["instructions"] = body.instructions
            record["input"] = input_of(body)
        else:
            record["prompt"] = body.prompt
        await self.request_log.log(record)


def _running_engine_replicas(app_name: str) -> int:
    """Running replicas of this application's engine deployment (Serve's controller; blocking)."""
    application = serve.status().applications.get(app_name)
    deployment = application.deployments.get(ENGINE_DEPLOYMENT) if application is not None else None
    if deployment is None:
        return 0
    states = deployment.replica_states.items()
    return sum(count for state, count in states if str(getattr(state, "value", state)) == "RUNNING")


APP = create_app()
IngressDeployment = make_fastapi_ingress(BigModelIngress, endpoint_map=ENDPOINTS, app=APP)

__all__ = ["APP", "BigModelIngress", "IngressDeployment", "serve"]
