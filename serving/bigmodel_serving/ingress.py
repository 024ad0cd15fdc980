"""The ingress deployment: Ray Serve LLM's OpenAI router behind our guard (keys, quotas, limits, log).

Routes (an allowlist of Ray's OpenAI routes, plus two of ours):

    GET  /v1/models, GET /v1/models/{id}   the base model, its adapters and routes (key)
    GET  /v1/routes                        canary routes: versions, weight, signals, decision (key)
    POST /v1/chat/completions              vLLM's chat completions              (key, quota)
    POST /v1/completions                   vLLM's completions                   (key, quota)
    POST /v1/responses                     vLLM's Responses API (stateless)     (key, quota)
    GET  /health                           200 once this ingress replica runs   (no key)
    GET  /metrics                          vLLM's metrics of every engine replica + per-key usage

Everything else answers 404 (Ray's /v1/embeddings, /tokenize, /v1/audio/..., /v1/score and FastAPI's
/docs are refused on purpose). Every error, ours, vLLM's or Ray's handle errors (backpressure,
no replica), has an OpenAI-style body. The guard is a plain ASGI middleware, so streamed answers
pass through it untouched; a client that disconnects cancels the request down to the engine,
where vLLM aborts it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import traceback
from collections.abc import AsyncGenerator, Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import ValidationError
from ray import serve
from ray.llm._internal.serve.core.configs.openai_api_models import (
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    ModelCard,
    ModelList,
    OpenAIHTTPException,
)
from ray.llm._internal.serve.core.ingress.ingress import (
    DEFAULT_LLM_ROUTER_HTTP_TIMEOUT,
    OpenAiIngress,
    make_fastapi_ingress,
    router_request_timeout,
)
from ray.llm._internal.serve.core.ingress.utils import _peek_at_generator
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import StreamingResponse
from vllm.entrypoints.openai.responses.protocol import ResponsesRequest
from vllm.exceptions import VLLMError

from bigmodel_serving.args import ENGINE_DEPLOYMENT, IngressConfig, Quota, parse_ingress_config
from bigmodel_serving.auth import ApiKeyStore, bearer_token
from bigmodel_serving.canary import MODEL_HEADER, CanaryRouter
from bigmodel_serving.errors import (
    APIError,
    body_too_large,
    internal_error,
    method_not_allowed,
    model_not_found,
    overloaded,
    quota_exceeded,
    route_not_found,
    unauthorized,
    unavailable,
)
from bigmodel_serving.feedback import (
    FeedbackClient,
    StreamCapture,
    answer_of,
    conversation_of,
    feedback_actor,
    feedback_disabled,
)
from bigmodel_serving.messages import check_messages, describe
from bigmodel_serving.metrics import CONTENT_TYPE, merge_engine_metrics, render_usage
from bigmodel_serving.quota import quota_actor, retry_after_header
from bigmodel_serving.quota_leases import QuotaLeases
from bigmodel_serving.request_log import RequestLogger

logger = logging.getLogger("ray.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

KEY_SCOPE = "bigmodel.key"  # the API key's name, set by the guard
MODEL_SCOPE = "bigmodel.model"  # the engine model (adapter version) that answered, for the response header
USAGE_SCOPE = "bigmodel.usage"  # (prompt_tokens, completion_tokens), set when a generation ends
ANONYMOUS = "anonymous"
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")
# Ray's OpenAI routes we serve (method name on OpenAiIngress -> route); the rest stay unrouted.
ENDPOINTS: dict[str, Callable[[FastAPI], Callable[..., Any]]] = {
    "models": lambda app: app.get("/v1/models", response_model=ModelList),
    "model_data": lambda app: app.get("/v1/models/{model:path}", response_model=ModelCard),
    "completions": lambda app: app.post("/v1/completions"),
    "chat": lambda app: app.post("/v1/chat/completions"),
    "responses": lambda app: app.post("/v1/responses"),
}

_replica: dict[str, BigModelIngress] = {}  # "ingress": the ingress object of this replica process


def current_ingress() -> BigModelIngress:
    ingress = _replica.get("ingress")
    if ingress is None:
        raise APIError(503, "The server is starting.", code="starting")
    return ingress


def route_path(scope: Scope) -> str:
    """The path below the app's route prefix (Serve passes the prefix as `root_path`)."""
    path, root = str(scope["path"]), str(scope.get("root_path", ""))
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def send_error(send: Send, error: APIError) -> None:
    body = error.body_bytes()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _BodyTooLargeError(Exception):
    pass


class GuardMiddleware:
    """Auth (401), body cap (413) and per-key quota (429) before Ray's router; usage after it."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        if not path.startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if MODEL_SCOPE in scope:  # which version of a canary route answered
                    header = (MODEL_HEADER.encode(), scope[MODEL_SCOPE].encode())
                    message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            ingress = current_ingress()
            key = ingress.authenticate(scope)
            scope[KEY_SCOPE] = key
            ingress.check_declared_length(scope)
            if scope["method"] == "POST" and path in GENERATION_PATHS:
                await ingress.admit(key)
        except APIError as error:
            await send_error(tracking_send, error)
            self._record(scope, status)
            return
        limit, received = ingress.config.max_body_bytes, 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLargeError
            return message

        try:
            await self.app(scope, capped_receive, tracking_send)
        except _BodyTooLargeError:
            await send_error(tracking_send, body_too_large(limit))
        except asyncio.CancelledError:
            status = 499  # the client went away; Serve cancelled the request
            raise
        finally:
            self._record(scope, status)

    @staticmethod
    def _record(scope: Scope, status: int) -> None:
        ingress = _replica.get("ingress")
        if ingress is not None and KEY_SCOPE in scope:
            prompt, completion = scope.get(USAGE_SCOPE, (0, 0))
            ingress.record(scope[KEY_SCOPE], status, prompt, completion)


def _error_response(error: APIError) -> Response:
    return Response(error.body_bytes(), status_code=error.status, headers=error.headers, media_type="application/json")


# Route and error handlers are module-level functions: Serve pickles the app, and module-level
# functions travel by reference, so they see this module's `_replica` in the replica process.


async def health() -> Response:
    return JSONResponse({"status": "ok" if "ingress" in _replica else "starting"})


async def metrics() -> Response:
    return Response(await current_ingress().metrics_text(), media_type=CONTENT_TYPE)


async def feedback(request: Request) -> Response:
    """POST /v1/feedback (the guard authenticated the key): see bigmodel_serving.feedback."""
    client = current_ingress().feedback
    if client is None:
        raise feedback_disabled()
    return JSONResponse(await client.submit(str(request.scope.get(KEY_SCOPE, ANONYMOUS)), await request.body()))


async def routes() -> Response:
    """GET /v1/routes (the guard authenticated the key): each canary route's versions, weight and decision."""
    return JSONResponse({"object": "list", "data": await current_ingress().canary.view()})


async def api_error(request: Request, error: Exception) -> Response:
    return _error_response(error if isinstance(error, APIError) else translate_exception(error))


async def invalid_request(request: Request, error: Exception) -> Response:
    problems = error.errors() if isinstance(error, RequestValidationError) else []
    first = problems[0] if problems else {"msg": "Invalid request", "loc": ("body",)}
    param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
    return _error_response(APIError(400, f"{first.get('msg')} (at {param or 'body'})", param=param))


async def http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    if error.status_code == 405:
        return _error_response(method_not_allowed(request.method, request.url.path))
    if error.status_code == 404 and error.detail in (None, "Not Found"):
        return _error_response(route_not_found(request.method, request.url.path))
    return _error_response(APIError(error.status_code, str(error.detail)))


def create_app() -> FastAPI:
    """The FastAPI app of the ingress: our guard, OpenAI-style errors, /health and /metrics."""
    app = FastAPI(title="BigModel", docs_url=None, redoc_url=None, openapi_url=None)
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/metrics", metrics, methods=["GET"])
    app.add_api_route("/v1/routes", routes, methods=["GET"])
    app.add_api_route("/v1/feedback", feedback, methods=["POST"])
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(OpenAIHTTPException, api_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    # Handlers for these classes answer without re-raising (the catch-all re-raises into Serve's log).
    for error_class in (VLLMError, ValueError, TypeError, BackPressureError, DeploymentUnavailableError):
        app.add_exception_handler(error_class, api_error)
    app.add_exception_handler(Exception, api_error)
    app.add_middleware(GuardMiddleware)
    return app


def translate_exception(error: BaseException) -> APIError:
    """An OpenAI-style error for an exception from Ray's router, a handle call or vLLM."""
    cause = getattr(error, "cause", None) or error  # RayTaskError wraps the replica's exception
    if isinstance(cause, APIError):
        return cause
    if isinstance(cause, BackPressureError):
        return overloaded(retry_after_header(2))
    if isinstance(cause, DeploymentUnavailableError):
        return unavailable("The model has no running replica yet; retry shortly.")
    if isinstance(cause, OpenAIHTTPException):
        return APIError(cause.status_code, cause.message)
    if isinstance(cause, StarletteHTTPException):
        return APIError(cause.status_code, str(cause.detail))
    client_error = _vllm_client_error(cause)
    if client_error is not None:
        return client_error
    if isinstance(cause, ValidationError):  # request data validated late (vLLM's content-part parsers)
        return APIError(400, f"Invalid request: {describe(cause)}")
    if isinstance(cause, ValueError) and isinstance(cause.__cause__, ValidationError):
        # A lazily validated request field (pydantic's iterator arm) failed when it was read.
        return APIError(400, f"Invalid request: {cause} {describe(cause.__cause__)}")
    if isinstance(cause, TypeError | ValueError) and _raised_while_parsing_the_body(cause):
        # vLLM's request models run validators that raise TypeError/ValueError on odd input.
        return APIError(400, f"Invalid request: {cause}")
    logger.error("bigmodel: unexpected error: %r", error)
    return internal_error()


def _vllm_client_error(error: BaseException) -> APIError | None:
    """vLLM's own classification: client errors are 4xx (not found 404), graceful ones carry a status."""
    from vllm.exceptions import GracefulHTTPError, VLLMClientError, VLLMNotFoundError

    if isinstance(error, VLLMNotFoundError):
        return APIError(404, str(error))
    if isinstance(error, VLLMClientError):
        return APIError(400, str(error), param=getattr(error, "parameter", None))
    if isinstance(error, GracefulHTTPError):
        status = int(error.http_status)
        return APIError(status, str(error), headers={"Retry-After": "1"} if status in (429, 503) else None)
    return None


def _raised_while_parsing_the_body(error: BaseException) -> bool:
    """True when the traceback passes through FastAPI's request-body validation."""
    return any(
        "fastapi/dependencies/utils.py" in frame.f_code.co_filename
        for frame, _ in traceback.walk_tb(error.__traceback__)
    )


def _usage_of_sse(chunk: str) -> tuple[dict[str, Any] | None, bool]:
    """(usage, is_usage_only_chunk) of one `data: {...}` server-sent event (Responses events have an
    `event:` line first, and their usage in `response.completed`'s response)."""
    if '"usage"' not in chunk:
        return None, False
    payload = chunk.strip()
    if payload.startswith("event:"):
        payload = payload.partition("\n")[2].strip()
    if payload.startswith("data:"):
        payload = payload[5:].strip()
    try:
        data = json.loads(payload)
    except ValueError:
        return None, False
    if isinstance(data, dict) and isinstance(data.get("response"), dict):
        usage = data["response"].get("usage")
        return (usage if isinstance(usage, dict) else None), False
    usage = data.get("usage") if isinstance(data, dict) else None
    return (usage if isinstance(usage, dict) else None), bool(usage) and not data.get("choices")


def _json_safe(value: Any) -> Any:
    """A request field as plain JSON data (pydantic items dumped)."""
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return value.model_dump(mode="json") if hasattr(value, "model_dump") else value


def token_counts(usage: dict[str, Any]) -> tuple[int, int]:
    """(prompt, completion) tokens of a chat/completions usage or a Responses usage (input/output tokens)."""
    prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
    completion = usage.get("completion_tokens", usage.get("output_tokens"))
    return int(prompt or 0), int(completion or 0)


class BigModelIngress(OpenAiIngress):
    """Ray Serve LLM's OpenAI router, with adapters, keys, quotas and the request log from user_config."""

    def __init__(
        self,
        llm_deployments: dict[str, Any],
        model_cards: dict[str, ModelCard],
        *,
        lora_paths: dict[str, str] | None = None,
        app_name: str = "default",
    ) -> None:
        super().__init__(llm_deployments, model_cards, lora_paths=None)
        self.app_name = app_name
        self.base_model = next(iter(model_cards))
        self.canary = CanaryRouter(app_name, self.base_model)
        self.config = IngressConfig.model_validate({"auth": {"mode": "none"}})
        self.key_store: ApiKeyStore | None = None
        self.request_log: RequestLogger | None = None
        self.feedback: FeedbackClient | None = None
        self._quota_leases: QuotaLeases | None = None
        self.created = int(time.time())
        self._engine_router_known = False  # the first user_config names the router the handles start with
        _replica["ingress"] = self

    # ---- configuration (Serve calls reconfigure at start and on every user_config change) ----

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        config = parse_ingress_config(user_config)
        keys_dir = config.auth.keys_dir if config.auth.mode == "api_keys" else None
        if keys_dir is None:
            self.key_store = None
        elif self.key_store is None or str(self.key_store.directory) != keys_dir:
            self.key_store = ApiKeyStore(keys_dir)
        if config.request_log != self.config.request_log or self.request_log is None:
            self.request_log = RequestLogger.from_args(config.request_log)
        self.canary.configure(config.routes, config.rollout_report)
        self._configure_feedback(config)
        if self._engine_router_known and config.engine_router != self.config.engine_router:
            self._renew_engine_handles(config.engine_router)
        self._engine_router_known = True
        self.config = config
        logger.info(
            "bigmodel: auth %s, quotas %s, adapters %s",
            config.auth.mode,
            "on" if config.quotas.enabled else "off",
            ", ".join(adapter.name for adapter in config.adapters) or "none",
        )

    def _renew_engine_handles(self, router: str | None) -> None:
        """New handles to the engine deployment: Serve builds a handle's request router on its first request and
        never swaps it, so a new routing policy (the engine's request_router_config) needs new handles."""
        try:
            app_name = serve.get_replica_context().app_name
        except Exception:
            return  # not in a Serve replica (unit tests): there are no routers to renew
        engine = serve.get_deployment_handle(ENGINE_DEPLOYMENT, app_name=app_name)
        self._default_serve_handles = dict.fromkeys(self._default_serve_handles, engine)
        self._configured_serve_handles.clear()
        logger.info("bigmodel: engine request router now %s", router or "Serve's default")

    def _configure_feedback(self, config: IngressConfig) -> None:
        if self.feedback is not None and self.feedback.args == config.feedback:
            return
        if config.feedback.enabled or self.feedback is not None:  # a disabled actor forgets nothing new
            try:
                app_name = serve.get_replica_context().app_name
            except Exception:
                app_name = self.app_name
            client = FeedbackClient(config.feedback, feedback_actor(app_name))
            self.feedback = client if config.feedback.enabled else None

    def _remember(self, body: Any, raw_request: Request | None, completion_id: str | None, answer: str) -> None:
        """Send an answered completion to the feedback actor (not awaited)."""
        if self.feedback is None or raw_request is None:
            return
        if isinstance(body, ChatCompletionRequest):
            conversation = conversation_of(messages=body.messages)
        else:
            conversation = conversation_of(prompt=body.prompt)
        key = str(raw_request.scope.get(KEY_SCOPE, ANONYMOUS))
        self.feedback.remember(completion_id, key, str(body.model), conversation, answer)

    # ---- guard hooks ----

    def authenticate(self, scope: Scope) -> str:
        """The key's name, or ANONYMOUS when auth is off; raises a 401 APIError."""
        if self.config.auth.mode == "none" or self.key_store is None:
            return ANONYMOUS
        token = bearer_token(_header(scope, b"authorization"))
        if token is None:
            raise unauthorized("Missing API key.")
        name = self.key_store.name_of(token)
        if name is None:
            raise unauthorized("Incorrect API key provided.")
        return name

    def check_declared_length(self, scope: Scope) -> None:
        length = _header(scope, b"content-length")
        if length is None:
            return
        if not length.isdigit():
            raise APIError(400, "Invalid Content-Length header.", code="invalid_header")
        if int(length) > self.config.max_body_bytes:
            raise body_too_large(self.config.max_body_bytes)

    def _quota(self, key: str) -> Quota:
        return self.config.quotas.for_key(key)

    def _actor(self) -> QuotaLeases:
        """This replica's leases of the quota actor's buckets (the actor is looked up on first need)."""
        if self._quota_leases is None:
            self._quota_leases = QuotaLeases(lambda: quota_actor(self.app_name))
        return self._quota_leases

    async def admit(self, key: str) -> None:
        """Admit from this replica's lease; only an empty lease waits for the quota actor."""
        wait = await self._actor().admit(key, self._quota(key))
        if wait > 0:
            raise quota_exceeded(key, retry_after_header(wait))

    def record(self, key: str, status: int, prompt_tokens: int, completion_tokens: int) -> None:
        """Charge the lease and count usage locally; both reach the quota actor within a second."""
        try:
            self._actor().record(key, self._quota(key), status, prompt_tokens, completion_tokens)
        except Exception:  # usage is best effort; the answer already went out
            logger.exception("bigmodel: could not record usage")

    async def metrics_text(self) -> str:
        usage = await self._actor().snapshot()
        handle = self._default_serve_handles[self.base_model]
        try:
            replies = await handle.broadcast("metrics_snapshot").results_async()
        except Exception as error:
            logger.warning("bigmodel: engine metrics unavailable: %r", error)
            replies = []
        engine = merge_engine_metrics((reply["replica"], reply["text"]) for reply in replies)
        engine += await self.canary.metrics_text()
        feedback_text = await self.feedback.metrics_text() if self.feedback is not None else ""
        return engine + render_usage(usage) + feedback_text

    # ---- models ----

    def _adapter_ids(self) -> list[str]:
        return [f"{self.base_model}:{adapter.name}" for adapter in self.config.adapters] + self.canary.model_ids()

    async def model(self, model_id: str) -> ModelCard | None:
        if model_id in self._model_cards:
            return self._model_cards[model_id]
        if model_id in self._adapter_ids():
            base = self._model_cards[self.base_model]
            return ModelCard(
                id=model_id,
                object="model",
                owned_by=base.owned_by,
                permission=list(base.permission),
                metadata={**base.metadata, "base_model_id": self.base_model},
            )
        return None

    async def models(self) -> ModelList:
        cards = [await self.model(model_id) for model_id in [self.base_model, *self._adapter_ids()]]
        return ModelList(data=[card for card in cards if card is not None])

    async def model_data(self, model: str) -> ModelCard:
        card = await self.model(model)
        if card is None:
            raise model_not_found(model)
        return card

    # ---- generation ----

    async def _get_response(  # type: ignore[override]
        self,
        *,
        body: ChatCompletionRequest | CompletionRequest | ResponsesRequest,
        call_method: str,
        raw_request: Request | None = None,
    ) -> AsyncGenerator[Any, None]:
        model = body.model or self.base_model
        key = raw_request.scope.get(KEY_SCOPE, ANONYMOUS) if raw_request is not None else ANONYMOUS
        choice = self.canary.choose(model, key)  # a canary route: the version this key gets
        if choice is not None:
            model = choice.engine_model
        if model != self.base_model and model not in self._adapter_ids():
            raise model_not_found(model)
        body.model = model
        if isinstance(body, ChatCompletionRequest):
            check_messages(body.messages)
        stream = bool(getattr(body, "stream", False))
        responses = isinstance(body, ResponsesRequest)
        remembers = self.feedback is not None and not responses  # feedback ids are chat/completions ids
        strip_usage = False
        if (
            stream
            and not isinstance(body, ResponsesRequest)
            and not (body.stream_options and body.stream_options.include_usage)
        ):
            # Usage is needed for token quotas and metrics; the extra chunk is not passed on.
            from vllm.entrypoints.generate.base.protocol import StreamOptions

            body.stream_options = StreamOptions(include_usage=True)
            strip_usage = True
        usage: dict[str, Any] = {}
        texts: list[str] = []
        capture = StreamCapture() if stream and remembers else None
        remembered = False
        try:
            async for item in self._engine_stream(body, call_method, raw_request, choice):
                if not stream:
                    found = item.get("usage") if isinstance(item, dict) else getattr(item, "usage", None)
                    if found is not None:
                        usage = found.model_dump() if hasattr(found, "model_dump") else dict(found)
                        texts = self._texts_of(item)
                        if raw_request is not None:
                            # Now, not in `finally`: Ray's router answers from the first item and drops this
                            # generator, whose `finally` may then run after the guard recorded the request.
                            raw_request.scope[USAGE_SCOPE] = token_counts(usage)
                        if remembers:
                            self._remember(body, raw_request, *answer_of(item))
                    yield item
                    continue
                chunks = item if isinstance(item, list) else [item]
                kept = []
                for chunk in chunks:
                    if capture is not None:
                        capture.feed(chunk)
                    if isinstance(chunk, str):
                        found_usage, usage_only = _usage_of_sse(chunk)
                        if found_usage:
                            usage = found_usage
                        if usage_only and strip_usage:
                            continue
                    kept.append(chunk)
                if capture is not None and capture.done and not remembered:
                    # Before the last chunk goes out: a client that got `[DONE]` may hang up at once, and
                    # the proxy then cancels this generator at its next `yield`.
                    remembered = True
                    self._remember(body, raw_request, capture.id, capture.text)
                if kept:
                    yield kept if isinstance(item, list) else kept[0]
            if capture is not None and not remembered:  # the stream ended without `[DONE]`
                self._remember(body, raw_request, capture.id, capture.text)
        except (BackPressureError, DeploymentUnavailableError) as error:
            raise translate_exception(error) from None
        finally:
            if raw_request is not None:
                raw_request.scope[USAGE_SCOPE] = token_counts(usage)
            await self._log(body, raw_request, texts, usage)

    async def responses(self, body: ResponsesRequest, request: Request) -> Response:
        """POST /v1/responses: vLLM's Responses API on an engine replica (engine.py), keys and quotas as for
        chat. Answered as vLLM's own server answers it: one JSON response, or its server-sent events."""
        async with router_request_timeout(DEFAULT_LLM_ROUTER_HTTP_TIMEOUT):
            first, stream = await _peek_at_generator(
                self._get_response(body=body, call_method="responses", raw_request=request)
            )
            head = first[0] if isinstance(first, list) and first else first
            if isinstance(head, ErrorResponse):
                raise OpenAIHTTPException(message=head.error.message, status_code=head.error.code, type=head.error.type)
            if isinstance(head, dict):
                return JSONResponse(head)

            async def events() -> AsyncGenerator[str, None]:
                async for item in stream:
                    yield "".join(item) if isinstance(item, list) else str(item)

            return StreamingResponse(events(), media_type="text/event-stream")

    def _engine_stream(
        self, body: Any, call_method: str, raw_request: Request | None, choice: Any
    ) -> AsyncGenerator[Any, None]:
        """Ray's router call; for a canary route, through the router's signals, fallback and renaming."""
        parent = super()._get_response

        def open_stream(engine_model: str) -> AsyncGenerator[Any, None]:
            body.model = engine_model
            if raw_request is not None and choice is not None:
                raw_request.scope[MODEL_SCOPE] = engine_model
            return parent(body=body, call_method=call_method, raw_request=raw_request)

        if choice is None:
            return open_stream(body.model)
        return self.canary.serve(choice, open_stream, lambda error: translate_exception(error).status)

    @staticmethod
    def _texts_of(response: Any) -> list[str]:
        if isinstance(response, dict):  # a Responses answer: its output text parts
            return [
                part.get("text", "")
                for output in response.get("output") or []
                if isinstance(output, dict)
                for part in output.get("content") or []
                if isinstance(part, dict) and part.get("type") == "output_text"
            ]
        texts = []
        for choice in getattr(response, "choices", []) or []:
            message = getattr(choice, "message", None)
            text = getattr(message, "content", None) if message is not None else getattr(choice, "text", None)
            texts.append(text or "")
        return texts

    async def _log(self, body: Any, raw_request: Request | None, texts: list[str], usage: dict[str, Any]) -> None:
        if self.request_log is None:
            return
        record: dict[str, Any] = {
            "request_id": getattr(body, "request_id", None),
            "key": raw_request.scope.get(KEY_SCOPE) if raw_request is not None else None,
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
            record["input"] = _json_safe(body.input)
        else:
            record["prompt"] = body.prompt
        await self.request_log.log(record)


APP = create_app()
IngressDeployment = make_fastapi_ingress(BigModelIngress, endpoint_map=ENDPOINTS, app=APP)

__all__ = ["APP", "BigModelIngress", "IngressDeployment", "serve"]
