"""Reading and validating JSONL training data (pure Python; no torch, no tokenizer needed).

Three formats, one JSON object per line (blank lines are skipped):

- chat:        {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
               an optional system message first, then user/assistant alternating, ending with assistant.
- instruction: {"instruction": "...", "input": "..." (optional), "output": "..."}
- completion:  {"prompt": "..." (may be empty), "completion": "..."}

Validation collects every defect with its 1-based line number instead of stopping at the first
one, and never modifies the input file. Sizes are bounded before anything is parsed: a file larger
than `max_file_bytes` is refused as a whole, and a line longer than `max_line_bytes` is reported
(with its number) without ever being held in memory, so one multi-GB line cannot exhaust the pod.
The over-length check needs the tokenizer; it is a second pass (`check_lengths`) that the trainer
runs once the tokenizer is loaded, still before training.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Format = Literal["chat", "instruction", "completion"]
FORMATS: tuple[Format, ...] = ("chat", "instruction", "completion")
ROLES = ("system", "user", "assistant")
DEFAULT_REPORT_LIMIT = 50
# One line may hold a whole long-context conversation (1 M tokens is ~4 MB of text). Files are
# streamed (tokencache.py), so the file limit bounds disk and preprocessing time, not memory.
DEFAULT_MAX_LINE_BYTES = 16 * 2**20
DEFAULT_MAX_FILE_BYTES = 64 * 2**30
_READ_CHUNK = 2**20

# Defect codes (stable; documented in docs/training.md).
ENCODING = "encoding"
BAD_JSON = "bad_json"
NOT_OBJECT = "not_object"
MISSING_KEY = "missing_key"
WRONG_TYPE = "wrong_type"
UNKNOWN_ROLE = "unknown_role"
ROLE_ORDER = "role_order"
EMPTY_CONTENT = "empty_content"
TOO_LONG = "too_long"
DUPLICATE = "duplicate"
TOO_FEW = "too_few"
LINE_TOO_LARGE = "line_too_large"
FILE_TOO_LARGE = "file_too_large"
TEMPLATE = "template"  # the chat template renders the example so that its turns cannot be masked


@dataclass(frozen=True)
class Defect:
    """One problem in the data. `line` is 1-based; 0 means the file as a whole."""

    line: int
    code: str
    message: str

    def __str__(self) -> str:
        where = f"line {self.line}" if self.line else "file"
        return f"{where}: {self.code}: {self.message}"


@dataclass
class Example:
    """One valid record. Chat and instruction records carry `messages`; completion records carry
    `prompt` and `completion`. Loss is computed on assistant turns / the completion only."""

    line: int
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    completion: str | None = None

    def texts(self) -> list[str]:
        """Every text field, in order (used by redaction and duplicate detection)."""
        if self.messages is not None:
            return [m["content"] for m in self.messages]
        return [self.prompt or "", self.completion or ""]

    def key(self) -> str:
        """A digest identifying the content, for duplicate detection."""
        payload = json.dumps([self.messages, self.prompt, self.completion], sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def short_key(self) -> int:
        """The first 64 bits of `key()`: what duplicate detection keeps per example (a false match
        among 10 million examples has a chance of about 3 in a million)."""
        return int(self.key()[:16], 16)


@dataclass
class ValidationResult:
    """Valid examples plus every defect found."""

    examples: list[Example] = field(default_factory=list)
    defects: list[Defect] = field(default_factory=list)
    lines: int = 0
    valid: int = 0  # valid examples (also when they were not kept)

    @property
    def ok(self) -> bool:
        """True when no defect was found."""
        return not self.defects

    def report(self, limit: int = DEFAULT_REPORT_LIMIT) -> str:
        """A human-readable report of the first `limit` defects plus a count of the rest."""
        return format_report(self.defects, limit=limit, examples=self.valid, lines=self.lines)


def format_report(
    defects: Sequence[Defect], *, limit: int = DEFAULT_REPORT_LIMIT, examples: int = 0, lines: int = 0
) -> str:
    """Render defects one per line, sorted by line, capped at `limit`."""
    if not defects:
        return f"dataset OK: {examples} examples in {lines} lines"
    ordered = sorted(defects, key=lambda d: (d.line, d.code))
    head = f"dataset invalid: {len(defects)} defect(s) in {lines} lines"
    body = [str(d) for d in ordered[:limit]]
    if len(ordered) > limit:
        body.append(f"... and {len(ordered) - limit} more defect(s)")
    return "\n".join([head, *body])


def read_lines(path: str | Path, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterable[tuple[int, bytes | None]]:
    """Yield (1-based line number, raw bytes without the newline); None for a line longer than
    `max_line_bytes`, which is skipped in chunks and never held in memory whole."""
    with open(path, "rb") as handle:
        number = 0
        while True:
            raw = handle.readline(max_line_bytes + 1)
            if not raw:
                return
            number += 1
            if len(raw) > max_line_bytes and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the over-long line
                    raw = handle.readline(_READ_CHUNK)
                yield number, None
                continue
            yield number, raw.rstrip(b"\r\n")


def validate_file(
    path: str | Path,
    fmt: Format,
    *,
    min_examples: int = 1,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    keep_examples: bool = True,
) -> ValidationResult:
    """Parse and check every line of a JSONL file (everything but length, which needs a tokenizer).

    `keep_examples=False` streams: only defects and the count are kept (`examples` stays empty),
    so a file of any size is checked in constant memory (plus 8 bytes per example for duplicates).
    """
    size = Path(path).stat().st_size
    if size > max_file_bytes:
        result = ValidationResult()
        result.defects.append(
            Defect(0, FILE_TOO_LARGE, f"{size} bytes, more than max_file_bytes {max_file_bytes}; split the dataset "
                   "or raise dataset.maxFileBytes")
        )  # fmt: skip
        return result
    return validate_lines(
        read_lines(path, max_line_bytes),
        fmt,
        min_examples=min_examples,
        max_line_bytes=max_line_bytes,
        keep_examples=keep_examples,
    )


def validate_lines(
    lines: Iterable[tuple[int, bytes | None]],
    fmt: Format,
    *,
    min_examples: int = 1,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    keep_examples: bool = True,
    seen: dict[int, int] | None = None,
) -> ValidationResult:
    """Validate numbered raw lines (None: a line over `max_line_bytes`); see `validate_file`.

    `seen` (example key → line) carries duplicate detection across calls (chunks of one file).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
    result = ValidationResult()
    seen = {} if seen is None else seen
    valid = 0
    for number, line in lines:
        result.lines = number
        if line is None or len(line) > max_line_bytes:
            result.defects.append(
                Defect(number, LINE_TOO_LARGE, f"longer than max_line_bytes {max_line_bytes}; not read")
            )
            continue
        # A UTF-8 byte-order mark on the first line is harmless.
        raw = line[3:] if number == 1 and line.startswith(b"\xef\xbb\xbf") else line
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            result.defects.append(
                Defect(number, ENCODING, f"not valid UTF-8 (byte {exc.start}: {raw[exc.start : exc.start + 1]!r})")
            )
            continue
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            result.defects.append(Defect(number, BAD_JSON, f"invalid JSON at column {exc.colno}: {exc.msg}"))
            continue
        if not isinstance(record, dict):
            result.defects.append(Defect(number, NOT_OBJECT, f"expected a JSON object, got {_type_name(record)}"))
            continue
        example, defects = _PARSERS[fmt](number, record)
        if defects:
            result.defects.extend(defects)
            continue
        assert example is not None
        surrogate = _lone_surrogate(example)
        if surrogate:
            result.defects.append(Defect(number, ENCODING, surrogate))
            continue
        digest = example.short_key()
        if digest in seen:
            result.defects.append(Defect(number, DUPLICATE, f"duplicate of line {seen[digest]}"))
            continue
        seen[digest] = number
        valid += 1
        if keep_examples:
            result.examples.append(example)
    result.valid = valid
    if valid < min_examples:
        result.defects.append(Defect(0, TOO_FEW, f"{valid} valid example(s); at least {min_examples} needed"))
    return result


def check_lengths(
    examples: Iterable[Example], count_tokens: Callable[[Example], int], max_seq_length: int
) -> list[Defect]:
    """Second pass: one `too_long` defect per example whose rendering exceeds `max_seq_length`."""
    defects = []
    for example in examples:
        n = count_tokens(example)
        if n > max_seq_length:
            defects.append(Defect(example.line, TOO_LONG, f"{n} tokens, more than max_seq_length {max_seq_length}"))
    return defects


def _lone_surrogate(example: Example) -> str | None:
    """Why a text is not encodable (a JSON escape such as \\ud800 that decodes to half a
    UTF-16 pair), or None. Tokenizers and the UTF-8 writers fail on such strings later."""
    for i, text in enumerate(example.texts()):
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            code = ord(text[exc.start])
            return f"text field {i} holds a lone surrogate \\u{code:04x} at character {exc.start}, not a character"
    return None


def _type_name(value: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


def _text_field(
    number: int, record: dict[str, Any], key: str, *, required: bool, allow_empty: bool
) -> tuple[str | None, list[Defect]]:
    if key not in record:
        if required:
            return None, [Defect(number, MISSING_KEY, f"missing key {key!r}")]
        return "", []
    value = record[key]
    if not isinstance(value, str):
        return None, [Defect(number, WRONG_TYPE, f"{key!r} must be a string, got {_type_name(value)}")]
    if not allow_empty and not value.strip():
        return None, [Defect(number, EMPTY_CONTENT, f"{key!r} is empty")]
    return value, []


def _parse_chat(number: int, record: dict[str, Any]) -> tuple[Example | None, list[Defect]]:
    if "messages" not in record:
        return None, [Defect(number, MISSING_KEY, "missing key 'messages'")]
    messages = record["messages"]
    if not isinstance(messages, list):
        return None, [Defect(number, WRONG_TYPE, f"'messages' must be an array, got {_type_name(messages)}")]
    if not messages:
        return None, [Defect(number, EMPTY_CONTENT, "'messages' is empty")]
    defects: list[Defect] = []
    clean: list[dict[str, str]] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            defects.append(Defect(number, WRONG_TYPE, f"{where} must be an object, got {_type_name(message)}"))
            continue
        missing = [k for k in ("role", "content") if k not in message]
        if missing:
            defects.append(Defect(number, MISSING_KEY, f"{where} is missing {', '.join(repr(k) for k in missing)}"))
            continue
        role, content = message["role"], message["content"]
        if not isinstance(role, str) or role not in ROLES:
            defects.append(
                Defect(number, UNKNOWN_ROLE, f"{where}.role is {role!r}; expected one of {', '.join(ROLES)}")
            )
            continue
        if not isinstance(content, str):
            defects.append(Defect(number, WRONG_TYPE, f"{where}.content must be a string, got {_type_name(content)}"))
            continue
        if not content.strip():
            defects.append(Defect(number, EMPTY_CONTENT, f"{where}.content ({role}) is empty"))
        clean.append({"role": role, "content": content})
    if defects:
        return None, defects
    order = _role_order_problem([m["role"] for m in clean])
    if order:
        return None, [Defect(number, ROLE_ORDER, order)]
    return Example(number, messages=clean), []


def _role_order_problem(roles: list[str]) -> str | None:
    """Why this role sequence is invalid, or None: system? (user assistant)+."""
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        return f"'system' may only be the first message (found at messages[{roles.index('system', 1)}])"
    if not body:
        return "no user/assistant messages after the system message"
    offset = len(roles) - len(body)
    for i, role in enumerate(body):
        expected = "user" if i % 2 == 0 else "assistant"
        if role != expected:
            return (
                f"messages[{i + offset}] is {role!r}; expected {expected!r} "
                "(user and assistant must alternate, user first)"
            )
    if body[-1] != "assistant":
        return "the last message must be from the assistant"
    return None


def _parse_instruction(number: int, record: dict[str, Any]) -> tuple[Example | None, list[Defect]]:
    instruction, d1 = _text_field(number, record, "instruction", required=True, allow_empty=False)
    extra, d2 = _text_field(number, record, "input", required=False, allow_empty=True)
    output, d3 = _text_field(number, record, "output", required=True, allow_empty=False)
    defects = d1 + d2 + d3
    if defects:
        return None, defects
    assert instruction is not None
    assert output is not None
    user = instruction if not extra else f"{instruction}\n\n{extra}"
    return Example(number, messages=[{"role": "user", "content": user}, {"role": "assistant", "content": output}]), []


def _parse_completion(number: int, record: dict[str, Any]) -> tuple[Example | None, list[Defect]]:
    prompt, d1 = _text_field(number, record, "prompt", required=True, allow_empty=True)
    completion, d2 = _text_field(number, record, "completion", required=True, allow_empty=False)
    defects = d1 + d2
    if defects:
        return None, defects
    return Example(number, prompt=prompt, completion=completion), []


_PARSERS: dict[str, Callable[[int, dict[str, Any]], tuple[Example | None, list[Defect]]]] = {
    "chat": _parse_chat,
    "instruction": _parse_instruction,
    "completion": _parse_completion,
}
