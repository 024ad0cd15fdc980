"""The ASGI guard in front of every route: API-key auth, body-size cap, per-request metrics.

It is a plain ASGI middleware (not a Starlette `BaseHTTPMiddleware`) so it adds microseconds, and
so that streamed responses pass through untouched.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from bigmodel_serving.auth import ApiKeyStore, bearer_token
from bigmodel_serving.errors import APIError, body_too_large, unauthorized
from bigmodel_serving.metrics import ServingMetrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# Handlers put ("model", "adapter") here so the request metric carries them.
LABELS_KEY = "bigmodel.labels"


class BodyTooLargeError(APIError):
    """Raised from `receive()` when a body without Content-Length grows past the cap."""


async def send_error(send: Send, error: APIError) -> None:
    body = error.body_bytes()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


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


class GuardMiddleware:
    """401 for /v1/* without a valid key (when keys are configured), 413 past the body cap."""

    def __init__(
        self, app: ASGIApp, *, key_store: ApiKeyStore | None, max_body_bytes: int, metrics: ServingMetrics
    ) -> None:
        self.app = app
        self.key_store = key_store
        self.max_body_bytes = max_body_bytes
        self.metrics = metrics

    def _auth_error(self, scope: Scope) -> APIError | None:
        if self.key_store is None or not route_path(scope).startswith("/v1/"):
            return None
        token = bearer_token(_header(scope, b"authorization"))
        if token is None:
            return unauthorized("Missing API key.")
        if not self.key_store.is_valid(token):
            return unauthorized("Incorrect API key provided.")
        return None

    def _declared_length_error(self, scope: Scope) -> APIError | None:
        length = _header(scope, b"content-length")
        if length is None:
            return None
        if not length.isdigit():
            return APIError(400, "Invalid Content-Length header.", code="invalid_header")
        if int(length) > self.max_body_bytes:
            return body_too_large(self.max_body_bytes)
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def tracking_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        received = 0

        async def capped_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    error = body_too_large(self.max_body_bytes)
                    raise BodyTooLargeError(error.status, error.message, code=error.code)
            return message

        try:
            error = self._auth_error(scope) or self._declared_length_error(scope)
            if error is not None:
                await send_error(tracking_send, error)
                return
            await self.app(scope, capped_receive, tracking_send)
        finally:
            model, adapter = scope.get(LABELS_KEY, ("", ""))
            self.metrics.observe_request(route_path(scope), status, model, adapter, time.perf_counter() - started)
