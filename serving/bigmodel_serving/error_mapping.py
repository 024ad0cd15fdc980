"""Every exception the ingress can meet, as an OpenAI-style answer with the right status, decided by type.

- ours: `APIError` as it is; `DependencyUnavailableError` (a helper actor is gone) 503 + Retry-After;
- Ray's: backpressure 429 + Retry-After, no replica 503, `OpenAIHTTPException` (an engine ErrorResponse)
  with its status, Starlette's HTTP errors with theirs;
- vLLM's: its own client/not-found/graceful classes;
- request data: pydantic's `ValidationError` (also when raised late, from a lazily validated field) 400;
  a `TypeError`/`ValueError` raised before the route's handler started (FastAPI parsing the body into
  vLLM's request model, whose validators raise those) 400 — the guard-free path marks the handler's start
  in the scope (`ENDPOINT_SCOPE`), so where an exception came from is known without reading tracebacks;
- anything else: 500, logged.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException

from bigmodel_serving.actor_calls import RETRY_AFTER_S, DependencyUnavailableError
from bigmodel_serving.errors import (
    APIError,
    dependency_unavailable,
    internal_error,
    method_not_allowed,
    overloaded,
    route_not_found,
    unavailable,
)
from bigmodel_serving.ingress_guard import ENDPOINT_SCOPE
from bigmodel_serving.messages import describe
from bigmodel_serving.quota import retry_after_header
from bigmodel_serving.ray_internals import OpenAIHTTPException

logger = logging.getLogger("ray.serve")


def translate_exception(error: BaseException, *, in_handler: bool = True) -> APIError:
    """An OpenAI-style error for an exception from our code, Ray's router, a handle call or vLLM.

    `in_handler`: False when the exception was raised before the route's handler started (body parsing).
    """
    cause = getattr(error, "cause", None) or error  # RayTaskError wraps the replica's exception
    if isinstance(cause, APIError):
        return cause
    if isinstance(cause, DependencyUnavailableError):
        logger.warning("bigmodel: %s (%r)", cause, cause.underlying)
        return dependency_unavailable(cause.what, RETRY_AFTER_S)
    if isinstance(cause, BackPressureError):
        return overloaded(retry_after_header(2))
    if isinstance(cause, DeploymentUnavailableError):
        return unavailable("The model has no running replica yet; retry shortly.")
    if isinstance(cause, OpenAIHTTPException):
        # Ray's router reports an exception of the engine's handle as an ErrorResponse whose `type` is the
        # exception's class: the engine's full queue (BackPressureError, status 503) is a 429 to clients.
        if cause.type == BackPressureError.__name__:
            return overloaded(retry_after_header(2))
        if cause.type == DeploymentUnavailableError.__name__:
            return unavailable("The model has no running replica yet; retry shortly.")
        status = int(cause.status_code)
        headers = {"Retry-After": "1"} if status in (429, 503) else None
        return APIError(status, cause.message, headers=headers)
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
    if isinstance(cause, TypeError | ValueError) and not in_handler:
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


def error_response(error: APIError) -> Response:
    return Response(error.body_bytes(), status_code=error.status, headers=error.headers, media_type="application/json")


# FastAPI exception handlers (module-level functions: Serve pickles the app, and these travel by reference).


async def api_error(request: Request, error: Exception) -> Response:
    if isinstance(error, APIError):
        return error_response(error)
    return error_response(translate_exception(error, in_handler=bool(request.scope.get(ENDPOINT_SCOPE))))


async def invalid_request(request: Request, error: Exception) -> Response:
    problems: list[Any] = list(error.errors()) if isinstance(error, RequestValidationError) else []
    first = problems[0] if problems else {"msg": "Invalid request", "loc": ("body",)}
    param = ".".join(str(part) for part in first.get("loc", ())[1:]) or None
    return error_response(APIError(400, f"{first.get('msg')} (at {param or 'body'})", param=param))


async def http_error(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    if error.status_code == 405:
        return error_response(method_not_allowed(request.method, request.url.path))
    if error.status_code == 404 and error.detail in (None, "Not Found"):
        return error_response(route_not_found(request.method, request.url.path))
    return error_response(APIError(error.status_code, str(error.detail)))
