"""OpenAI-style errors: `{"error": {"message", "type", "param", "code"}}` with the right HTTP status."""

from __future__ import annotations

import json
from typing import Any

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
NOT_FOUND = "not_found_error"
RATE_LIMIT = "rate_limit_error"
TIMEOUT = "timeout_error"
SERVER = "server_error"
UNAVAILABLE = "service_unavailable_error"

# The OpenAI `type` for a status code when the error came from elsewhere (vLLM, Ray).
TYPE_BY_STATUS = {
    401: AUTHENTICATION,
    403: "permission_error",
    404: NOT_FOUND,
    408: TIMEOUT,
    429: RATE_LIMIT,
    503: UNAVAILABLE,
    504: TIMEOUT,
}


def type_for_status(status: int) -> str:
    if status in TYPE_BY_STATUS:
        return TYPE_BY_STATUS[status]
    return SERVER if status >= 500 else INVALID_REQUEST


class APIError(Exception):
    """An error answered to the client as an OpenAI-style JSON body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or type_for_status(status)
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body, as the OpenAI API shapes it."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body_bytes(self) -> bytes:
        return json.dumps(self.body()).encode()


def model_not_found(model: str) -> APIError:
    return APIError(
        404,
        f"The model `{model}` does not exist. GET /v1/models lists the models served here.",
        code="model_not_found",
        param="model",
    )


def route_not_found(method: str, path: str) -> APIError:
    return APIError(404, f"No route {method} {path}.", code="unknown_url")


def method_not_allowed(method: str, path: str) -> APIError:
    return APIError(405, f"Method {method} is not allowed for {path}.", code="method_not_allowed")


def unauthorized(reason: str) -> APIError:
    return APIError(
        401,
        f"{reason} Send `Authorization: Bearer <key>` with one of this server's API keys.",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def body_too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than {limit} bytes.", code="request_too_large")


def quota_exceeded(key_name: str, retry_after: str) -> APIError:
    return APIError(
        429,
        f"Rate limit reached for API key `{key_name}`; retry after {retry_after} s.",
        code="rate_limit_exceeded",
        headers={"Retry-After": retry_after},
    )


def overloaded(retry_after: str) -> APIError:
    return APIError(
        429,
        "The server is at capacity; retry after the delay in the Retry-After header.",
        code="server_busy",
        headers={"Retry-After": retry_after},
    )


def unavailable(message: str, *, code: str = "unavailable", retry_after_s: int = 5) -> APIError:
    """503 + Retry-After: the server cannot answer now and says when to try again."""
    return APIError(503, message, code=code, headers={"Retry-After": str(retry_after_s)})


def not_configured() -> APIError:
    """The ingress has not received its configuration (keys, quotas) yet: it refuses everything."""
    return unavailable("The server is starting: its configuration has not arrived yet.", code="not_configured")


def dependency_unavailable(what: str, retry_after_s: int) -> APIError:
    """A helper actor (quota, feedback) is gone or restarting: the request is refused, not failed."""
    return unavailable(
        f"The {what} is not available; retry after the delay in the Retry-After header.",
        code="dependency_unavailable",
        retry_after_s=retry_after_s,
    )


def internal_error() -> APIError:
    return APIError(500, "The server failed to process the request.", code="internal_error")
