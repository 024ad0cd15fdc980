"""Reading (and where needed rewriting) the OpenAI answers the ingress passes on, in one place.

Ray's router answers a streamed request with text packets of server-sent events (`data: <json>` lines, a
blank line after each event, `data: [DONE]` last; one packet may hold several events), and a request that
is not streamed with one JSON body. Usage accounting, feedback capture and the canary's model name all read
them through this module:

- `parse_packet(packet)` -> `Event`s; `join_events(events)` -> the packet again;
- `Event.completion()` / `Completion.from_body(body)` -> a `Completion`: typed access to `id`, `model`,
  `usage`, the first choice's text, and `with_model(name)` for a copy answering under another name
  (re-serialized JSON, never a string replacement);
- `AnswerText`: the id and first-choice text of a streamed answer, chunk by chunk.

Responses answers (POST /v1/responses) are read by the same classes: a whole answer is a `response`
object (`usage` with input/output tokens, text in `output[].content[]` parts of type `output_text`); a
streamed one is `event: <type>` + `data: {...}` events whose `response` object (in `response.created`,
`response.completed`, ...) holds the model and, at the end, the usage.

Cost per packet: splitting it into events; an event's JSON is decoded only when a reader asks for it, and
`Event.usage` first checks that the payload mentions a `"usage"` key at all (every chunk but the last has
none) before decoding it. A packet is rebuilt only when an event was changed or dropped.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

DONE = "[DONE]"
_UNREAD: Any = object()


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts of an answer (OpenAI's `usage` object); `raw` is the object as it came."""

    prompt_tokens: int
    completion_tokens: int
    raw: dict[str, Any]

    @staticmethod
    def of(value: Any) -> Usage | None:
        if not isinstance(value, dict):
            return None
        prompt = value.get("prompt_tokens", value.get("input_tokens"))  # chat/completions, or Responses
        completion = value.get("completion_tokens", value.get("output_tokens"))
        return Usage(_count(prompt), _count(completion), value)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


@dataclass(frozen=True, slots=True)
class Completion:
    """A chat or text completion object: a whole answer, or one chunk of a streamed one."""

    data: dict[str, Any]

    @staticmethod
    def from_body(body: bytes | str) -> Completion | None:
        """The completion in a JSON body, or None when it is not a JSON object."""
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):
            return None
        return Completion(data) if isinstance(data, dict) else None

    @property
    def id(self) -> str | None:
        value = self.data.get("id")
        return value if isinstance(value, str) else None

    @property
    def _response(self) -> dict[str, Any] | None:
        """The `response` object a streamed Responses event carries, if any."""
        value = self.data.get("response")
        return value if isinstance(value, dict) else None

    @property
    def model(self) -> str | None:
        holder = self._response or self.data
        value = holder.get("model")
        return value if isinstance(value, str) else None

    @property
    def usage(self) -> Usage | None:
        holder = self._response or self.data
        return Usage.of(holder.get("usage"))

    @property
    def has_choices(self) -> bool:
        return bool(self.data.get("choices"))

    def texts(self) -> list[str]:
        """Each choice's text (chat: `message.content` or `delta.content`; completions: `text`), in order."""
        if self.data.get("object") == "response":
            return ["".join(_output_texts(self.data))]
        choices = self.data.get("choices") or []
        return [(_text_of(choice) if isinstance(choice, dict) else None) or "" for choice in choices]

    def first_text(self) -> str | None:
        """The text of choice 0 in this object, None when it has none."""
        for choice in self.data.get("choices") or []:
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                return _text_of(choice)
        return None

    def with_model(self, model: str) -> Completion:
        response = self._response
        if response is not None:
            return Completion({**self.data, "response": {**response, "model": model}})
        return Completion({**self.data, "model": model})

    def to_json(self) -> str:
        return _dumps(self.data)


def _output_texts(response: dict[str, Any]) -> list[str]:
    """The `output_text` parts of a Responses answer's message items."""
    texts = []
    for item in response.get("output") or []:
        for part in (item.get("content") or []) if isinstance(item, dict) else []:
            if isinstance(part, dict) and part.get("type") == "output_text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
    return texts


def _text_of(choice: dict[str, Any]) -> str | None:
    for holder in (choice.get("message"), choice.get("delta")):
        if isinstance(holder, dict):
            content = holder.get("content")
            return content if isinstance(content, str) else None
    text = choice.get("text")
    return text if isinstance(text, str) else None


@dataclass(slots=True)
class Event:
    """One server-sent event: its `data` (None for an event without data lines) and its text as it came."""

    raw: str  # the event's lines, without the blank line that ends it
    data: str | None
    _completion: Any = field(default=_UNREAD, repr=False)
    changed: bool = False

    @property
    def done(self) -> bool:
        return self.data == DONE

    def completion(self) -> Completion | None:
        """The decoded JSON object (once), None for `[DONE]` or anything that is not a JSON object."""
        if self._completion is _UNREAD:
            data = self.data
            self._completion = None if data is None or data == DONE else Completion.from_body(data)
        return self._completion

    @property
    def usage(self) -> Usage | None:
        """The chunk's usage, None when it carries none (decodes only a payload that names a usage key)."""
        if self.data is None or '"usage"' not in self.data:
            return None
        completion = self.completion()
        return completion.usage if completion is not None else None

    def replaced(self, completion: Completion) -> Event:
        """This event carrying `completion` instead (re-serialized)."""
        data = completion.to_json()
        fields = [line for line in self.raw.split("\n") if not line.startswith("data:")]  # e.g. `event: <type>`
        return Event("\n".join([*fields, f"data: {data}"]), data, completion, changed=True)

    def encode(self) -> str:
        return self.raw + "\n\n"


def parse_packet(packet: str) -> list[Event]:
    """The events of one packet of a server-sent event stream (LF or CRLF line ends)."""
    if "\r" in packet:
        packet = packet.replace("\r\n", "\n").replace("\r", "\n")
    events = []
    for part in packet.split("\n\n"):
        block = part.strip("\n")
        if not block:
            continue
        data = None
        if block.startswith("data:") and "\n" not in block:  # what Ray and vLLM send: one data line
            data = block[5:].removeprefix(" ")
        else:
            lines = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
            data = "\n".join(lines) if lines else None
        events.append(Event(block, data))
    return events


def join_events(events: list[Event]) -> str:
    return "".join(event.encode() for event in events)


@dataclass
class AnswerText:
    """The id and the text of choice 0 of a streamed answer, fed chunk by chunk; `done` after `[DONE]`."""

    id: str | None = None
    parts: list[str] = field(default_factory=list)
    done: bool = False

    def feed(self, event: Event) -> None:
        if event.done:
            self.done = True
            return
        completion = event.completion()
        if completion is None:
            return
        if self.id is None:
            self.id = completion.id
        text = completion.first_text()
        if text:
            self.parts.append(text)

    @property
    def text(self) -> str:
        return "".join(self.parts)
