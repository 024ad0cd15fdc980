"""Named API keys (rotation by file change), token-bucket quotas, the /metrics text and the request log, without Ray."""

from __future__ import annotations

import asyncio
import json
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bigmodel_serving.args import Quota, RequestLogArgs
from bigmodel_serving.auth import ApiKeyStore, bearer_token, read_keys
from bigmodel_serving.metrics import merge_engine_metrics, render_usage
from bigmodel_serving.quota import QuotaActor, QuotaBook, retry_after_header
from bigmodel_serving.quota_leases import QuotaLeases
from bigmodel_serving.request_log import RequestLogger


def _secret_dir(root: Path, keys: dict[str, str]) -> Path:
    """The layout kubelet writes for a Secret volume: files are links into `..data`."""
    version = root / f"..{len(list(root.glob('..2*')))}"
    version.mkdir(parents=True)
    for name, key in keys.items():
        (version / name).write_text(key + "\n")
    data = root / "..data"
    tmp = root / "..data_tmp"
    tmp.symlink_to(version.name)
    tmp.replace(data)
    for name in keys:
        link = root / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    return root


def test_named_keys_from_a_secret_volume(tmp_path: Path) -> None:
    keys = _secret_dir(tmp_path / "keys", {"alice": "sk-a", "bob": "sk-b"})
    assert read_keys(keys) == {"alice": "sk-a", "bob": "sk-b"}
    store = ApiKeyStore(keys, recheck_s=0)
    assert store.name_of("sk-a") == "alice"
    assert store.name_of("sk-b") == "bob"
    assert store.name_of("sk-x") is None
    assert store.name_of("") is None


def test_rotation_without_restart(tmp_path: Path) -> None:
    root = tmp_path / "keys"
    store = ApiKeyStore(_secret_dir(root, {"alice": "old"}), recheck_s=0)
    assert store.name_of("old") == "alice"
    (root / "..2026").mkdir()
    (root / "..2026" / "alice").write_text("new")
    os.symlink("..2026", root / "..data_new")
    (root / "..data_new").replace(root / "..data")
    assert store.name_of("new") == "alice"
    assert store.name_of("old") is None


def test_missing_directory_fails_closed(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path / "absent", recheck_s=0)
    assert store.key_count() == 0
    assert store.name_of("anything") is None


def test_bearer_token() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None
    assert bearer_token(None) is None


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_requests_per_minute_bucket_and_retry_after() -> None:
    clock = _Clock()
    book = QuotaBook(clock=clock)
    quota = Quota(requests_per_minute=2)
    assert book.admit("a", quota) == 0
    assert book.admit("a", quota) == 0
    wait = book.admit("a", quota)
    assert 29 < wait <= 30  # one request refills in 60/2 s
    assert retry_after_header(wait) == "30"
    assert book.admit("b", quota) == 0  # other keys are unaffected
    clock.now = 30
    assert book.admit("a", quota) == 0


def test_tokens_per_minute_charged_after_the_request() -> None:
    clock = _Clock()
    book = QuotaBook(clock=clock)
    quota = Quota(tokens_per_minute=60)
    assert book.admit("a", quota) == 0
    book.record("a", quota, 200, prompt_tokens=50, completion_tokens=40)  # 90 > 60: in debt by 30
    assert book.admit("a", quota) == 30  # 30 tokens at 1 token/s
    clock.now = 30
    assert book.admit("a", quota) == 0
    assert book.snapshot()["a"] == {"responses": {200: 1}, "prompt_tokens": 50, "completion_tokens": 40}


def test_unlimited_quota_admits_everything() -> None:
    book = QuotaBook()
    assert all(book.admit("a", Quota()) == 0 for _ in range(1000))


class _FakeActorHandle:
    """A QuotaActor behind Ray-like `handle.method.remote(...)` calls (awaitable), counting calls."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.actor = QuotaActor()
        self.actor.book.clock = clock
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.actor, name)
        handle = self

        class _Method:
            @staticmethod
            async def remote(*args: Any) -> Any:
                handle.calls[name] += 1
                return method(*args)

        return _Method()


def _replica(handle: _FakeActorHandle, clock: _Clock, ttl_s: float = 5.0) -> QuotaLeases:
    return QuotaLeases(lambda: handle, clock=clock, ttl_s=ttl_s, flush_interval_s=None)


def test_leases_admit_locally_and_refill_in_the_background() -> None:
    clock = _Clock()
    handle = _FakeActorHandle(clock)
    leases = _replica(handle, clock)
    quota = Quota(requests_per_minute=1200)  # a lease is 5 %: 60 requests

    async def run() -> list[float]:
        waits = []
        for _ in range(200):
            waits.append(await leases.admit("a", quota))
            await asyncio.sleep(0)  # let a background top-up run
        return waits

    assert asyncio.run(run()) == [0.0] * 200
    assert handle.calls["lease"] < 20  # one miss, then a top-up per ~30 requests
    assert leases.misses == 1 and leases.hits == 199
    assert asyncio.run(leases.admit("a", Quota())) == 0  # no limits: never asks the actor


def test_leases_never_admit_more_than_the_bucket_across_replicas() -> None:
    clock = _Clock()
    handle = _FakeActorHandle(clock)
    first, second = _replica(handle, clock), _replica(handle, clock)
    quota = Quota(requests_per_minute=100)

    async def run() -> tuple[int, float, float]:
        admitted = 0
        for _ in range(100):
            for replica in (first, second):
                if await replica.admit("a", quota) == 0:
                    admitted += 1
                await asyncio.sleep(0)
        return admitted, await first.admit("a", quota), await second.admit("a", quota)

    admitted, wait_first, wait_second = asyncio.run(run())
    assert admitted == 100  # the whole minute's burst, not one request more
    assert wait_first > 0 and wait_second > 0  # 429 + Retry-After from both replicas
    assert asyncio.run(first.admit("b", quota)) == 0  # other keys are unaffected
    clock.now = 60
    assert asyncio.run(first.admit("a", quota)) == 0


def test_a_small_limit_asks_the_actor_for_every_request() -> None:
    clock = _Clock()
    handle = _FakeActorHandle(clock)
    leases = _replica(handle, clock)
    quota = Quota(requests_per_minute=3)
    waits = [asyncio.run(leases.admit("limited", quota)) for _ in range(4)]
    assert waits[:3] == [0, 0, 0]
    assert 19 < waits[3] <= 20
    assert handle.calls["lease"] == 4


def test_lease_token_debt_is_charged_like_the_book() -> None:
    clock = _Clock()
    handle = _FakeActorHandle(clock)
    leases = _replica(handle, clock)
    quota = Quota(tokens_per_minute=60)
    assert asyncio.run(leases.admit("a", quota)) == 0
    leases.record("a", quota, 200, prompt_tokens=50, completion_tokens=40)  # 90 > 60: in debt by 30
    assert asyncio.run(leases.admit("a", quota)) == 30  # the debt went to the actor with the miss
    clock.now = 30
    assert asyncio.run(leases.admit("a", quota)) == 0
    usage = asyncio.run(leases.snapshot())
    assert usage["a"] == {"responses": {200: 1}, "prompt_tokens": 50, "completion_tokens": 40}


def test_unused_leases_and_debts_go_back_to_the_actor() -> None:
    clock = _Clock()
    handle = _FakeActorHandle(clock)
    leases = _replica(handle, clock, ttl_s=0.001)  # the buckets barely refill meanwhile
    requests, tokens = Quota(requests_per_minute=1200), Quota(tokens_per_minute=1000)
    assert asyncio.run(leases.admit("r", requests)) == 0
    assert handle.actor.book._requests["r"].level == 1200 - 1 - 60  # one admitted, 60 leased
    leases.record("t", tokens, 200, prompt_tokens=100, completion_tokens=0)  # no lease yet: a debt
    clock.now = leases.ttl_s
    asyncio.run(leases.flush())
    assert handle.actor.book._requests["r"].level == pytest.approx(1200 - 1, abs=0.1)
    assert handle.actor.book._tokens["t"].level == pytest.approx(1000 - 100, abs=0.1)
    assert handle.actor.book.snapshot()["t"]["prompt_tokens"] == 100


ENGINE_TEXT = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="tiny"} 2.0
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{engine="0",model_name="tiny"} 17.0
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{generation="0"} 3.0
"""


def test_engine_metrics_of_two_replicas_merge_without_collisions() -> None:
    text = merge_engine_metrics([("k3x9a1bq", ENGINE_TEXT), ("7mz2c0dd", ENGINE_TEXT)]) + render_usage(
        {"alice": {"responses": {200: 3, 429: 1}, "prompt_tokens": 10, "completion_tokens": 5}}
    )
    families = {family.name: family for family in text_string_to_metric_families(text)}
    running = families["vllm:num_requests_running"]
    assert sorted(sample.labels["replica"] for sample in running.samples) == ["7mz2c0dd", "k3x9a1bq"]
    assert "python_gc_objects_collected" not in families
    prompt = families["vllm:prompt_tokens"]  # a counter stays a counter: TYPE names its `_total` samples
    assert prompt.type == "counter" and [sample.value for sample in prompt.samples] == [17.0, 17.0]
    assert {s.labels["code"]: s.value for s in families["bigmodel_key_requests"].samples} == {"200": 3, "429": 1}
    assert families["bigmodel_key_prompt_tokens"].samples[0].labels == {"key": "alice"}


def test_request_log_redacts(tmp_path: Path) -> None:
    log_file = tmp_path / "log.jsonl"
    logger = RequestLogger(log_file, redactor=lambda text: text.replace("alice@example.com", "[EMAIL]"))
    logger.write(
        {
            "key": "alice",
            "messages": [{"role": "user", "content": "mail alice@example.com"}],
            "completions": ["ok alice@example.com"],
        }
    )
    entry = json.loads(log_file.read_text())
    assert entry["messages"][0]["content"] == "mail [EMAIL]"
    assert entry["completions"] == ["ok [EMAIL]"]
    assert entry["key"] == "alice"


def test_request_log_off_or_unredactable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert RequestLogger.from_args(RequestLogArgs()) is None
    monkeypatch.setattr("bigmodel_serving.request_log.load_redactor", lambda: None)
    args = RequestLogArgs(enabled=True, path=str(tmp_path / "log.jsonl"))
    assert RequestLogger.from_args(args) is None  # never written unredacted by accident
    plain = RequestLogger.from_args(RequestLogArgs(enabled=True, path=str(tmp_path / "log.jsonl"), redact_pii=False))
    assert plain is not None and plain.redactor is None
