"""Small pure pieces: stop strings, admission gate, incremental detokenizer, request log."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bigmodel_serving.admission import AdmissionGate
from bigmodel_serving.args import RequestLogArgs
from bigmodel_serving.engines.transformers_engine import IncrementalDetokenizer
from bigmodel_serving.errors import APIError
from bigmodel_serving.generation import StopMatcher
from bigmodel_serving.request_log import RequestLogger


@pytest.mark.parametrize(
    ("stops", "deltas", "expected", "stopped"),
    [
        ((), ["ab", "cd"], "abcd", False),
        (("END",), ["hello E", "N", "D world"], "hello ", True),
        (("END",), ["hello E", "NOUGH"], "hello ENOUGH", False),
        (("\n\n", "###"), ["a\n", "\nb"], "a", True),
        (("xyz",), ["x"], "x", False),  # held back, then flushed at the end
    ],
)
def test_stop_matcher(stops: tuple[str, ...], deltas: list[str], expected: str, stopped: bool) -> None:
    matcher = StopMatcher(stops)
    emitted, hit = "", False
    for delta in deltas:
        text, hit = matcher.feed(delta)
        emitted += text
        if hit:
            break
    if not hit:
        emitted += matcher.flush()
    assert (emitted, hit) == (expected, stopped)


@pytest.mark.anyio
async def test_admission_gate_queues_then_rejects() -> None:
    gate = AdmissionGate(max_ongoing=1, max_queued=1)
    await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0)
    assert gate.waiting == 1
    with pytest.raises(APIError) as error:
        await gate.acquire()
    assert error.value.status == 429
    assert error.value.headers == {"Retry-After": "1"}
    gate.release()
    await waiter
    assert (gate.ongoing, gate.waiting) == (1, 0)
    gate.release()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class _ByteTokenizer:
    """Token i is byte i; decoding an incomplete UTF-8 sequence yields U+FFFD, like real tokenizers."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_detokenizer_waits_for_whole_characters() -> None:
    detokenizer = IncrementalDetokenizer(_ByteTokenizer())
    pieces = [detokenizer.add([byte]) for byte in "hé!".encode()]
    assert pieces == ["h", "", "é", "!"]
    assert detokenizer.flush() == ""


def test_request_log_redacts(tmp_path: Path) -> None:
    log_file = tmp_path / "requests.jsonl"
    logger = RequestLogger(log_file, redactor=lambda text: text.replace("alice@example.com", "[EMAIL]"))
    logger.write(
        {
            "request_id": "r1",
            "messages": [{"role": "user", "content": "mail alice@example.com"}],
            "completions": ["ok alice@example.com"],
        }
    )
    entry = json.loads(log_file.read_text())
    assert entry["messages"][0]["content"] == "mail [EMAIL]"
    assert entry["completions"] == ["ok [EMAIL]"]
    assert entry["request_id"] == "r1"


def test_request_log_off_or_unredactable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert RequestLogger.from_args(RequestLogArgs()) is None
    monkeypatch.setattr("bigmodel_serving.request_log.load_redactor", lambda: None)
    args = RequestLogArgs(enabled=True, path=str(tmp_path / "log.jsonl"))
    assert RequestLogger.from_args(args) is None  # never written unredacted by accident
    plain = RequestLogger.from_args(RequestLogArgs(enabled=True, path=str(tmp_path / "log.jsonl"), redact_pii=False))
    assert plain is not None and plain.redactor is None


@pytest.mark.anyio
async def test_regressions_found_by_schemathesis() -> None:
    """An empty prompt is a 400 (not an engine crash); a denormal temperature means greedy."""
    from bigmodel_serving.args import parse_serve_args
    from bigmodel_serving.engines.stub import StubEngineFactory
    from bigmodel_serving.validation import ModelCatalog, prepare_completion

    args = parse_serve_args({"model": {"uri": "file:///m", "served_name": "m"}, "engine": "transformers"})
    engine = StubEngineFactory()(args)
    catalog = ModelCatalog(base="m", adapters=(), max_model_len=32, max_n=2)
    with pytest.raises(APIError) as error:
        await prepare_completion(b'{"model": "m", "prompt": ""}', engine, catalog)
    assert (error.value.status, error.value.param) == (400, "prompt")
    prepared = await prepare_completion(b'{"model": "m", "prompt": "x", "temperature": 5e-324}', engine, catalog)
    assert prepared.sampling.temperature == 0.0


def test_request_log_uses_the_training_redactor(tmp_path: Path) -> None:
    args = RequestLogArgs(enabled=True, path=str(tmp_path / "log.jsonl"))
    logger = RequestLogger.from_args(args)
    assert logger is not None and logger.redactor is not None
    line = logger.entry({"prompt": "mail alice@example.com", "completions": ["ok"], "model": "m"})
    assert "alice@example.com" not in line
    assert json.loads(line)["model"] == "m"


@pytest.mark.anyio
async def test_chat_template_rejection_is_a_400() -> None:
    from bigmodel_serving.engines.stub import StubEngine
    from bigmodel_serving.validation import ModelCatalog, prepare_chat

    class StrictTemplate(StubEngine):
        def render_chat(self, messages: list[dict[str, str]]) -> str:
            raise ValueError("Conversation roles must alternate user/assistant")

    engine = StrictTemplate(max_model_len=32, adapters=(), ttft_s=0, per_token_s=0)
    body = b'{"model": "m", "messages": [{"role": "assistant", "content": "x"}]}'
    with pytest.raises(APIError) as error:
        await prepare_chat(body, engine, ModelCatalog(base="m", adapters=(), max_model_len=32, max_n=1))
    assert error.value.status == 400
    assert "must alternate" in error.value.message
