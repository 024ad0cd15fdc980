"""The HTTP API: an OpenAI-compatible FastAPI app with exactly five routes.

    GET  /v1/models            the base model and its adapters
    POST /v1/chat/completions  chat, optionally streamed as server-sent events
    POST /v1/completions       text completion, optionally streamed
    GET  /health               200 when the engine is healthy, else 503 (no auth)
    GET  /metrics              Prometheus text format (no auth; see docs/serving.md)

Every other path answers 404, every error has an OpenAI-style JSON body, and FastAPI's /docs and
/openapi.json are off. `openapi_document()` returns the schema for tools (e.g. schemathesis).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from bigmodel_serving.admission import AdmissionGate
from bigmodel_serving.args import ServeArgs
from bigmodel_serving.auth import ApiKeyStore
from bigmodel_serving.engines.base import Engine, ModelInfo
from bigmodel_serving.errors import APIError, internal_error, method_not_allowed, route_not_found
from bigmodel_serving.generation import Generator, PreparedRequest
from bigmodel_serving.metrics import CONTENT_TYPE, ServingMetrics
from bigmodel_serving.middleware import LABELS_KEY, GuardMiddleware
from bigmodel_serving.protocol import ChatCompletionRequest, CompletionRequest, ErrorResponse, ModelList
from bigmodel_serving.request_log import RequestLogger
from bigmodel_serving.validation import ModelCatalog, prepare_chat, prepare_completion

logger = logging.getLogger(__name__)


@dataclass
class Runtime:
    """Everything a replica's routes share: args, the started engine, limits, metrics, keys."""

    args: ServeArgs
    engine: Engine
    catalog: ModelCatalog
    generator: Generator
    metrics: ServingMetrics
    key_store: ApiKeyStore | None
    created: int


def make_runtime(args: ServeArgs, engine: Engine, info: ModelInfo) -> Runtime:
    """Wire a started engine to the limits, metrics, keys and request log from `args`."""
    metrics = ServingMetrics()
    gate = AdmissionGate(args.limits.max_ongoing_requests, args.limits.max_queued_requests, metrics)
    generator = Generator(
        engine, gate, metrics, args.limits.request_timeout_s, RequestLogger.from_args(args.request_log)
    )
    catalog = ModelCatalog(
        base=args.model.served_name,
        adapters=info.adapters,
        max_model_len=info.max_model_len,
        max_n=args.limits.max_n,
    )
    key_store = ApiKeyStore(args.auth.api_keys_file) if args.auth.api_keys_file else None
    return Runtime(args, engine, catalog, generator, metrics, key_store, int(time.time()))


def _error_response(error: APIError) -> Response:
    return Response(error.body_bytes(), status_code=error.status, headers=error.headers, media_type="application/json")


class _StreamingWithCancel(StreamingResponse):
    """A streaming response that stops generation when the client goes away."""

    def __init__(self, content: AsyncIterator[bytes], cancel: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._cancel = cancel

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._cancel()


def _request_body_spec(model: type[Any]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in {
        400: "Invalid request",
        401: "Missing or wrong API key",
        404: "Unknown model",
        413: "Body too large",
        429: "Over capacity (see Retry-After)",
        504: "Timed out",
    }.items()
}


def create_api(runtime: Runtime) -> FastAPI:
    """The ASGI app of one replica (FastAPI + the auth/limit/metrics guard)."""
    app = FastAPI(title="BigModel OpenAI-compatible API", docs_url=None, redoc_url=None, openapi_url=None)

    async def generate(request: Request, prepared: PreparedRequest) -> Response:
        request.scope[LABELS_KEY] = (prepared.base_model, prepared.adapter or "")
        if prepared.stream:
            events, cancel = await runtime.generator.stream(prepared)
            return _StreamingWithCancel(events, cancel)
        body = await runtime.generator.complete(prepared)
        return JSONResponse(body)

    @app.get("/v1/models", response_model=ModelList, responses=_ERROR_RESPONSES)
    async def list_models() -> Response:
        catalog = runtime.catalog
        cards = [
            {
                "id": name,
                "object": "model",
                "created": runtime.created,
                "owned_by": "bigmodel",
                "root": name,
                "parent": None if name == catalog.base else catalog.base,
            }
            for name in catalog.names()
        ]
        return JSONResponse({"object": "list", "data": cards})

    @app.post(
        "/v1/chat/completions", openapi_extra=_request_body_spec(ChatCompletionRequest), responses=_ERROR_RESPONSES
    )
    async def chat_completions(request: Request) -> Response:
        prepared = await prepare_chat(await request.body(), runtime.engine, runtime.catalog)
        return await generate(request, prepared)

    @app.post("/v1/completions", openapi_extra=_request_body_spec(CompletionRequest), responses=_ERROR_RESPONSES)
    async def completions(request: Request) -> Response:
        prepared = await prepare_completion(await request.body(), runtime.engine, runtime.catalog)
        return await generate(request, prepared)

    @app.get("/health")
    async def health() -> Response:
        try:
            await runtime.engine.check_health()
        except Exception as error:
            return JSONResponse({"status": "unhealthy", "reason": type(error).__name__}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(runtime.metrics.render(), media_type=CONTENT_TYPE)

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> Response:
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 405:
            return _error_response(method_not_allowed(request.method, request.url.path))
        if error.status_code == 404:
            return _error_response(route_not_found(request.method, request.url.path))
        return _error_response(APIError(error.status_code, str(error.detail)))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception) -> Response:
        logger.exception("unexpected error on %s %s", request.method, request.url.path)
        return _error_response(internal_error())

    app.add_middleware(
        GuardMiddleware,
        key_store=runtime.key_store,
        max_body_bytes=runtime.args.limits.max_body_bytes,
        metrics=runtime.metrics,
    )
    return app


def openapi_document(app: FastAPI, model_names: list[str] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `app`, with the request-body schemas the routes validate.

    With `model_names`, the `model` fields list them as an enum (the names this deployment serves).
    """
    document = get_openapi(title=app.title, version="1", routes=app.routes)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for model in (ChatCompletionRequest, CompletionRequest):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        if model_names:
            schema["properties"]["model"]["enum"] = list(model_names)
        schemas[model.__name__] = schema
    return document
