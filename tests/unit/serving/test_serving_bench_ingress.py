"""ingress_bench: both ingresses answer through the same ASGI path from the stand-in engine (no Ray, no engine)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray.llm")


@pytest.fixture(autouse=True)
def _no_quota_actor(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Usage would be flushed to the quota actor, and a Ray call starts a local Ray in this pytest process,
    whose workers then lack what later tests set up (seen: the serving tier's S3 credentials)."""
    import ray

    from bigmodel_serving.quota_leases import QuotaLeases

    async def close(self: QuotaLeases) -> None:
        return None

    monkeypatch.setattr(QuotaLeases, "_start_flusher", lambda self: None)
    monkeypatch.setattr(QuotaLeases, "close", close)
    yield
    assert not ray.is_initialized(), "the test started Ray"


def test_both_ingresses_stream_from_the_stand_in_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ingress_bench

    monkeypatch.setattr(ingress_bench, "PLAN", ((1, 3), (4, 2)))
    monkeypatch.setattr(ingress_bench, "ROUNDS", 2)
    (tmp_path / "bench").write_text("k-bench-test")
    config = {"auth": {"mode": "api_keys", "keys_dir": str(tmp_path)}}  # keys on; no quota: no actor needed
    result = asyncio.run(ingress_bench.compare("unit-bench", config, "Bearer k-bench-test", "tiny"))
    assert set(result["load"]) == {"1", "4"}
    for row in result["load"].values():
        assert row["b"]["requests"] == row["c"]["requests"]
        # The first text comes after the stand-in engine's first-token delay, for both ingresses.
        assert row["b"]["ttft_p50_ms"] >= ingress_bench.FIRST_TOKEN_S * 1000
        assert row["c"]["ttft_p50_ms"] >= ingress_bench.FIRST_TOKEN_S * 1000
        assert row["diff_p50_ms"] == pytest.approx(row["c"]["ttft_p50_ms"] - row["b"]["ttft_p50_ms"], abs=0.01)


def test_a_wrong_key_is_refused_on_the_guarded_path(tmp_path: Path) -> None:
    from ingress_bench import StubEngine, completions_app, timed_request

    from bigmodel_serving.ingress import BigModelIngress
    from bigmodel_serving.ingress_guard import GuardMiddleware, unregister

    (tmp_path / "bench").write_text("k-bench-test")
    card = {"id": "tiny", "object": "model", "owned_by": "bench", "permission": [], "metadata": {}}
    ours = BigModelIngress({"tiny": StubEngine("tiny")}, {"tiny": card}, app_name="unit-bench")
    ours.reconfigure({"auth": {"mode": "api_keys", "keys_dir": str(tmp_path)}})
    app = GuardMiddleware(completions_app(ours))
    body = b'{"model": "tiny", "prompt": "hi", "max_tokens": 4, "stream": true}'
    try:
        assert asyncio.run(timed_request(app, body, {"Authorization": "Bearer nope"}))[1] == 401
        assert asyncio.run(timed_request(app, body, {"Authorization": "Bearer k-bench-test"}))[1] == 200
    finally:
        unregister()
