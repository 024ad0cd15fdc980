"""Optional request/response log (JSON lines) for the feedback loop, with PII redaction.

Each finished generation request appends one line: time, request id, the API key's name, model
(`<base>:<adapter>` for an adapter), the prompt or messages, the generated texts (non-streamed
answers) and usage. With `redact_pii` (the default) every
text goes through the training package's redactor (`bigmodel_training.redact.redact_text`), the
same one that cleans fine-tuning datasets. If redaction is asked for but the redactor cannot be
imported, nothing is logged (a warning says why): an unredacted log is never written by accident.
API keys and headers are never logged.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bigmodel_serving.args import RequestLogArgs

logger = logging.getLogger(__name__)

Redactor = Callable[[str], str]


def load_redactor() -> Redactor | None:
    """The shared PII redactor, or None when the training package's redactor is not importable."""
    try:
        from bigmodel_training.redact import redact_text
    except ImportError:
        return None

    def redact(text: str) -> str:
        redacted, _counts = redact_text(text)
        return str(redacted)

    return redact


def _redact_value(value: Any, redact: Redactor) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list):
        return [_redact_value(item, redact) for item in value]
    if isinstance(value, dict):
        return {key: _redact_value(item, redact) for key, item in value.items()}
    return value


class RequestLogger:
    """Appends one JSON line per request to `path`, off the event loop."""

    def __init__(self, path: Path, redactor: Redactor | None) -> None:
        self.path = path
        self.redactor = redactor
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_args(cls, args: RequestLogArgs) -> RequestLogger | None:
        """A logger for the args, or None when logging is off (or redaction is impossible)."""
        if not args.enabled or not args.path:
            return None
        redactor = None
        if args.redact_pii:
            redactor = load_redactor()
            if redactor is None:
                logger.warning(
                    "request_log.redact_pii is on but bigmodel_training.redact is not importable; "
                    "request logging is disabled rather than written unredacted"
                )
                return None
        return cls(Path(args.path), redactor)

    def entry(self, record: dict[str, Any]) -> str:
        """The JSON line for `record` (texts redacted when a redactor is set)."""
        content = {"time": round(time.time(), 3), **record}
        if self.redactor is not None:
            for field in ("prompt", "messages", "completions"):
                if field in content:
                    content[field] = _redact_value(content[field], self.redactor)
        return json.dumps(content, ensure_ascii=False)

    def write(self, record: dict[str, Any]) -> None:
        line = self.entry(record)
        with self._lock, self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")

    async def log(self, record: dict[str, Any]) -> None:
        """Write `record` in a worker thread; a failure is logged, never raised to the client."""
        try:
            await asyncio.to_thread(self.write, record)
        except Exception:
            logger.exception("could not write the request log entry")
