"""Eager checks of chat `messages` before they reach Ray's router and vLLM.

vLLM's request model types a message's `content` (and an assistant's `tool_calls`) as
`str | Iterable[part] | None`; pydantic validates the iterable arm lazily, so a bad part (`{"type":
"text", "text": []}`, `[5]`, an unknown part type) only fails later, when Ray materialises the
list, as a bare ValueError that would surface as a 500. Materialising here turns the same problem
into a 400 that names the message and the field.
"""

from __future__ import annotations

from collections.abc import Iterable, MutableSequence
from typing import Any

from pydantic import ValidationError

from bigmodel_serving.errors import APIError

_LAZY_FIELDS = ("content", "tool_calls")


def check_messages(messages: Any) -> None:
    """Validate every message in place: a role, and content/tool_calls materialised into lists."""
    if not isinstance(messages, MutableSequence):
        return
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise APIError(400, f"messages[{index}].role is required.", param=f"messages.{index}.role")
        for name in _LAZY_FIELDS:
            value = message.get(name)
            if value is None or isinstance(value, str):
                continue
            message[name] = _materialise(value, f"messages[{index}].{name}", f"messages.{index}.{name}")


def _materialise(value: Any, where: str, param: str) -> list[Any]:
    if not isinstance(value, Iterable) or isinstance(value, dict | bytes):
        raise APIError(400, f"{where} must be a string, null or an array.", param=param)
    try:
        return list(value)
    except ValidationError as error:
        raise APIError(400, f"{where}: {describe(error)}", param=param) from None
    except (TypeError, ValueError) as error:
        raise APIError(400, f"{where}: {error}", param=param) from None


def describe(error: ValidationError) -> str:
    """The most specific problem of a pydantic error in one line: `msg (at loc)`.

    A content part is checked against every part type; the deepest location is the variant that
    came closest (an `image_url` part with a bad `url`, not "text is missing"). Union member names
    (`ChatCompletionContentPartTextParam`) are left out of the location.
    """
    problems = error.errors()
    if not problems:
        return "invalid value"
    best = max(problems, key=lambda problem: len(problem.get("loc", ())))
    parts = [str(part) for part in best.get("loc", ()) if not _is_type_name(part)]
    location = ".".join(parts)
    return f"{best.get('msg', 'invalid value')}" + (f" (at {location})" if location else "")


def _is_type_name(part: object) -> bool:
    return isinstance(part, str) and part[:1].isupper()
