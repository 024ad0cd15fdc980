"""The ingress's guard: an ASGI middleware in front of Ray's OpenAI router for every /v1 request.

Before the router: the replica must be configured (503 until Serve's first `reconfigure`), the key known
(401), the declared body size within the cap (413) and, for a generation, the key's quota admit it (429,
or 503 when the quota service is unavailable). While the body is read: the cap again. After the answer:
the status and token usage go to the quota book. Streamed answers pass through untouched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

from bigmodel_serving.args import IngressConfig
from bigmodel_serving.canary import MODEL_HEADER
from bigmodel_serving.errors import APIError, body_too_large, not_configured

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

KEY_SCOPE = "bigmodel.key"  # the API key's name, set by the guard
MODEL_SCOPE = "bigmodel.model"  # the engine model (adapter version) that answered, for the response header
USAGE_SCOPE = "bigmodel.usage"  # (prompt_tokens, completion_tokens), set when a generation ends
CALLED_MODEL_SCOPE = "bigmodel.called_model"  # the model the client asked for (usage by model and adapter)
ENDPOINT_SCOPE = "bigmodel.endpoint"  # set when a route's handler starts: the request body was parsed by then
ANONYMOUS = "anonymous"
GENERATION_PATHS = ("/v1/chat/completions", "/v1/completions", "/v1/responses")


class GuardedIngress(Protocol):
    """What the guard needs of the ingress replica."""

    config: IngressConfig | None

    def authenticate(self, scope: Scope) -> str: ...

    def check_declared_length(self, scope: Scope) -> None: ...

    async def admit(self, key: str) -> None: ...

    def record(
        self, key: str, status: int, prompt_tokens: int, completion_tokens: int, model: str | None = None
    ) -> None: ...


_replica: dict[str, GuardedIngress] = {}  # "ingress": the ingress object of this replica process


def register(ingress: GuardedIngress) -> None:
    _replica["ingress"] = ingress


def unregister() -> None:
    _replica.pop("ingress", None)


def replica_ingress() -> GuardedIngress | None:
    return _replica.get("ingress")


def route_path(scope: Scope) -> str:
    """The path below the app's route prefix (Serve passes the prefix as `root_path`)."""
    path, root = str(scope["path"]), str(scope.get("root_path", ""))
    if root and path.startswith(root):
        return path[len(root) :] or "/"
    return path


def header(scope: Scope, name: bytes) -> str | None:
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

    def __init__(self, app: ASGIApp) -> None:
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
                    model_header = (MODEL_HEADER.encode(), scope[MODEL_SCOPE].encode())
                    message["headers"] = [*message.get("headers", []), model_header]
            await send(message)

        ingress = replica_ingress()
        try:
            if ingress is None or ingress.config is None:
                raise not_configured()
            key = ingress.authenticate(scope)
            scope[KEY_SCOPE] = key
            ingress.check_declared_length(scope)
            if scope["method"] == "POST" and path in GENERATION_PATHS:
                await ingress.admit(key)
        except APIError as error:
            await send_error(tracking_send, error)
            self._record(scope, error.status)
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

        busy = getattr(ingress, "busy", None) if scope["method"] == "POST" and path in GENERATION_PATHS else None
        if busy is not None:
            busy.enter()  # the model's busy time (usage_report.py): idle GPU-seconds are the rest
        try:
            await self.app(scope, capped_receive, tracking_send)
        except _BodyTooLargeError:
            await send_error(tracking_send, body_too_large(limit))
        except asyncio.CancelledError:
            status = 499  # the client went away; Serve cancelled the request
            raise
        finally:
            if busy is not None:
                busy.exit()
            self._record(scope, status)

    @staticmethod
    def _record(scope: Scope, status: int) -> None:
        ingress = replica_ingress()
        if ingress is not None and KEY_SCOPE in scope:
            prompt, completion = scope.get(USAGE_SCOPE, (0, 0))
            ingress.record(scope[KEY_SCOPE], status, prompt, completion, scope.get(CALLED_MODEL_SCOPE))
