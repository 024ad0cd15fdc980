"""What the ingress does with an answer on its way out (read through openai_stream.py).

- usage: the token counts go to the scope for the guard's quota charge and metrics; a usage-only chunk the
  ingress asked for (quotas count tokens) is dropped when the client did not ask for it;
- feedback: the answer's id and text are journaled on the feedback sink (awaited: durable before the
  client can rate it, feedback_journal.py), for a stream before its last packet goes out (a client that
  got `[DONE]` may hang up at once);
- canary: the answer's `model` becomes the route the client called; the version's latency or error is
  counted when the answer ends;
- the request log: one record when the answer ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.responses import JSONResponse, Response, StreamingResponse

from bigmodel_serving.canary import CanaryRouter, Opened
from bigmodel_serving.ingress_guard import USAGE_SCOPE, Scope
from bigmodel_serving.openai_stream import AnswerText, Completion, Event, Usage, join_events, parse_packet

Remember = Callable[[str | None, str], Awaitable[None]]  # (completion id, answer text) -> sent to the feedback actor
Log = Callable[[list[str], dict[str, Any]], Awaitable[None]]  # (texts, usage) -> the request log


class AnswerWatch:
    """One answer's watcher; `await watch(response)` returns the response to send."""

    def __init__(
        self,
        scope: Scope,
        *,
        strip_usage: bool,
        remember: Remember | None,
        log: Log,
        canary: CanaryRouter | None = None,
        opened: Opened | None = None,
        status_of: Callable[[BaseException], int] = lambda error: 500,
    ) -> None:
        self.scope = scope
        self.strip_usage = strip_usage
        self.remember = remember
        self.log = log
        self.canary = canary
        self.opened = opened
        self.status_of = status_of
        self.usage: Usage | None = None
        # A canary route: answer under the name the client called.
        self.rename = (opened.choice.engine_model, opened.choice.requested) if opened is not None else None

    async def watch(self, response: Response) -> Response:
        if isinstance(response, StreamingResponse):
            response.body_iterator = self._stream(response.body_iterator)
            return response
        return await self._whole(response)

    # ---- an answer in one body ----

    async def _whole(self, response: Response) -> Response:
        completion = Completion.from_body(bytes(response.body))
        self._end(failed=response.status_code >= 500)
        if completion is None:
            await self.log([], {})
            return response
        self._usage(completion.usage)
        texts = completion.texts()
        if self.remember is not None:
            await self.remember(completion.id, texts[0] if texts else "")
        if self.rename is not None and completion.model == self.rename[0]:
            response = JSONResponse(completion.with_model(self.rename[1]).data, status_code=response.status_code)
        await self.log(texts, self.usage.raw if self.usage is not None else {})
        return response

    # ---- a streamed answer ----

    async def _stream(self, packets: AsyncIterable[Any]) -> AsyncIterator[str]:
        text = AnswerText() if self.remember is not None else None
        remembered = False
        failed = False
        try:
            async for item in packets:
                packet = bytes(item).decode() if isinstance(item, bytes | bytearray | memoryview) else str(item)
                out = self._packet(packet, text)
                if text is not None and text.done and not remembered and self.remember is not None:
                    remembered = True
                    await self.remember(text.id, text.text)
                if out:
                    yield out
            if text is not None and not remembered and self.remember is not None:  # ended without `[DONE]`
                await self.remember(text.id, text.text)
        except Exception as error:
            failed = self.status_of(error) >= 500
            raise
        finally:
            self._end(failed=failed)
            await self.log([text.text] if text is not None else [], self.usage.raw if self.usage else {})

    def _packet(self, packet: str, text: AnswerText | None) -> str:
        """The packet to pass on (the same string unless an event changed or was dropped)."""
        events = parse_packet(packet)
        kept: list[Event] = []
        changed = False
        for event in events:
            if event.data is None:
                kept.append(event)
                continue
            usage = event.usage
            if usage is not None:
                self._usage(usage)
                completion = event.completion()
                if self.strip_usage and completion is not None and not completion.has_choices:
                    changed = True  # the usage-only chunk the client did not ask for
                    continue
            if text is not None:
                text.feed(event)
            if self.rename is not None and not event.done:
                completion = event.completion()
                if completion is not None and completion.model == self.rename[0]:
                    kept.append(event.replaced(completion.with_model(self.rename[1])))
                    changed = True
                    continue
            kept.append(event)
        return join_events(kept) if changed else packet

    # ---- both ----

    def _usage(self, usage: Usage | None) -> None:
        if usage is None:
            return
        self.usage = usage
        # Now, not when the answer ends: the guard records the request as soon as the response is sent.
        self.scope[USAGE_SCOPE] = (usage.prompt_tokens, usage.completion_tokens)

    def _end(self, *, failed: bool) -> None:
        if self.canary is not None and self.opened is not None:
            self.canary.finish(self.opened, failed)
            self.opened = None  # once
