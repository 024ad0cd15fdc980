"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the right HTTP status."""

from __future__ import annotations

import json
from typing import Any

# (status, type) pairs used across the app; `code` says more precisely what went wrong.
INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
RATE_LIMIT = "rate_limit_error"
TIMEOUT = "timeout_error"
SERVER = "server_error"


class APIError(Exception):
    """An error answered to the client as an OpenAI-style JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = INVALID_REQUEST,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body, as the OpenAI API shapes it."""
        return error_body(self.message, type=self.type, code=self.code, param=self.param)

    def body_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist. GET /v1/models lists the models served here.",
        type=NOT_FOUND,
        code="model_not_found",
        param="model",
    )


def route_not_found(method: str, path: str) -> APIError:
    return APIError(404, f"No route {method} {path}.", type=NOT_FOUND, code="unknown_url")


def method_not_allowed(method: str, path: str) -> APIError:
    return APIError(405, f"Method {method} is not allowed for {path}.", code="method_not_allowed")


def unauthorized(reason: str) -> APIError:
    return APIError(
        401,
        f"{reason} Send `Authorization: Bearer <key>` with a key from this server's API-keys Secret.",
        type=AUTHENTICATION,
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than {limit} bytes.", code="request_too_large")


def overloaded(retry_after_s: int) -> APIError:
    return APIError(
        429,
        "The server is at capacity; retry after the delay in the Retry-After header.",
        type=RATE_LIMIT,
        code="server_busy",
        headers={"Retry-After": str(retry_after_s)},
    )


def timed_out(timeout_s: float) -> APIError:
    return APIError(504, f"The request did not finish within {timeout_s:g} s.", type=TIMEOUT, code="timeout")


def internal_error() -> APIError:
    return APIError(500, "The server failed to process the request.", type=SERVER, code="internal_error")
