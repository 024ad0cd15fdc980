"""docs/benchmarks.md: only the "## Serving path" section is ours to replace."""

from __future__ import annotations

from pathlib import Path

from http_load import percentile
from serving_bench_report import replace_section


def test_replace_keeps_other_sections(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Training\n\nfast\n\n## Serving path\n\nold\n\n## Operator\n\nlean\n")
    replace_section(doc, "## Serving path", "## Serving path\n\nnew\n")
    assert doc.read_text() == "# Benchmarks\n\n## Training\n\nfast\n\n## Serving path\n\nnew\n\n## Operator\n\nlean\n"


def test_append_when_missing_and_create_file(tmp_path: Path) -> None:
    doc = tmp_path / "docs" / "benchmarks.md"
    replace_section(doc, "## Serving path", "## Serving path\n\nnew\n")
    assert doc.read_text() == "# Benchmarks\n\n## Serving path\n\nnew\n"
    replace_section(doc, "## Serving path", "## Serving path\n\nnewer\n")
    assert doc.read_text() == "# Benchmarks\n\n## Serving path\n\nnewer\n"


def test_percentile() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0


def _stats(rps: float, ttft: float) -> dict[str, float | int]:
    return {"rps": rps, "ttft_p50_ms": ttft, "ttft_p99_ms": 2 * ttft, "itl_p50_ms": 5.0, "itl_p99_ms": 9.0, "errors": 0}


def _alone(ttft: float) -> dict[str, float | int]:
    return {"requests": 256, "ttft_p50_ms": ttft, "ttft_p99_ms": 2 * ttft}


def test_report_checks_the_targets_against_the_bare_ray_app() -> None:
    from serving_bench_report import render_section

    run = {
        "model": "tiny",
        "parameters": 1_500_000,
        "ready_s": 60,
        "seconds": 200,
        "load": {
            "1": {"a": _stats(10.0, 20.0), "b": _stats(9.0, 22.0), "c": _stats(8.9, 24.0)},
            "8": {
                "a": _stats(40.0, 30.0),
                "b": _stats(30.0, 35.0),
                "c": _stats(20.0, 45.0),
                "round_ttft_diff_ms": [12.0, -40.5, 8.0],
                "round_rps_ratio": [0.6, 0.9, 0.7],
            },
        },
        "ingress_alone": {
            "first_token_s": 0.02,
            "inter_token_s": 0.005,
            "tokens": 16,
            "load": {"32": {"b": _alone(21.5), "c": _alone(22.25), "diff_p50_ms": 0.75, "total_diff_p50_ms": 1.5}},
        },
        "quota": {
            "admit_p50_ms": 0.004,
            "admit_p99_ms": 0.02,
            "admit_actor_calls": 0,
            "miss_p50_ms": 1.7,
            "miss_p99_ms": 4.0,
            "in_process_p50_ms": 0.002,
            "calls": 500,
            "load_average": 1.5,
        },
    }
    old = {**run, "model": "old", "quota": {"actor_p50_ms": 1.7, "actor_p99_ms": 4.5, "in_process_p50_ms": 0.002}}
    failed = {"model": "m100", "failed": 1, "date": "d"}
    text = render_section(
        [run, old, failed],
        machine="m",
        engine_kwargs={"x": 1},
        method={"solo_requests": 12, "rounds": 6, "settle_s": 3.0},
    )
    assert "| 1 | 0.989 | yes | n/a | 2 | yes | n/a | 0.89 |" in text  # within 5% and 3 ms of (b)
    # the medians of the rounds' ratios and differences
    assert "| 8 | 0.667 | **no** | 0.7 (0.6 … 0.9) | 10 | **no** | 8 (-40.5 … 12) | 0.5 |" in text
    assert "| 32 | 21.5 | 22.25 | 0.75 | yes | 43 | 44.5 | 1.5 | 256 |" in text  # the ingress alone
    assert "Ingress alone" in text and "first text after 20 ms, then one every 5 ms" in text
    assert "| admitted from the replica's lease (0 actor calls) | 0.004 | 0.02 | yes |" in text
    assert "| lease empty: round trip to the quota actor | 1.7 | 4 |  |" in text
    assert "p50 1.7 ms (**no**)" in text  # an older run without leases still renders
    assert "### Model `m100`" in text and "failed (exit code 1)" in text


def test_rerunning_one_model_keeps_the_others() -> None:
    from serving_bench import merge_runs

    kept = [{"model": "tiny", "n": 1}, {"model": "m100", "n": 1}]
    assert merge_runs(kept, [{"model": "m100", "n": 2}]) == [{"model": "tiny", "n": 1}, {"model": "m100", "n": 2}]
    assert merge_runs([], [{"model": "m100", "n": 2}, {"model": "tiny", "n": 2}])[0]["model"] == "tiny"


def test_kv_cache_is_sized_for_the_model() -> None:
    from serving_bench import kv_cache_bytes

    m100 = {"num_hidden_layers": 11, "num_key_value_heads": 4, "head_dim": 64, "hidden_size": 1024}
    assert kv_cache_bytes(m100, sequences=32, tokens=512) == int(2 * 11 * 4 * 64 * 4 * 32 * 512 * 1.25)
    tiny = {"num_hidden_layers": 2, "num_key_value_heads": 1, "hidden_size": 128, "num_attention_heads": 2}
    assert kv_cache_bytes(tiny, sequences=32, tokens=512) == 32 * 2**20  # vLLM's CPU minimum we use


def test_round_orders_put_each_server_in_each_position_first() -> None:
    from serving_bench import round_orders

    orders = round_orders(["a", "b", "c"])
    assert len(orders) == 6 and len(set(orders)) == 6
    for position in range(3):
        assert {order[position] for order in orders[:3]} == {"a", "b", "c"}


def _fastpath_run(variant: str, c_rps: float) -> dict[str, object]:
    def stats(rps: float, ttft: float) -> dict[str, float]:
        return {"rps": rps, "ttft_p50_ms": ttft, "ttft_p99_ms": ttft * 2, "errors": 0}

    by_conc = {}
    for conc in ("1", "8", "32"):
        by_conc[conc] = {
            "a": stats(10.0, 10.0),
            "b": stats(8.0, 30.0),
            "c": stats(c_rps, 20.0),
            "load_average": 2.0,
            "rounds": {s: {"rps": [10.0, 10.0], "ttft_p50_ms": [10.0, 12.0]} for s in ("a", "b", "c")},
        }
    return {"model": "tiny", "variant": variant, "env": {}, "date": "d", "load_average_before": 1.0,
            "ready_s": 1, "seconds": 2, "rounds": 2, "load": by_conc}  # fmt: skip


def test_fastpath_report_states_the_targets_and_the_spread() -> None:
    from fastpath_bench import render

    text = render(
        [
            _fastpath_run("default", 9.5),
            _fastpath_run("direct", 7.0),
            {"model": "tiny", "variant": "haproxy", "skipped": "no haproxy binary"},
        ],
        "machine",
        2,
    )
    assert "(c)/(a) req/s at 8: 0.950 (target ≥ 0.9: met)" in text
    assert "(c)/(a) req/s at 32: 0.700 (target ≥ 0.9: **not met**)" in text
    assert "TTFT p50 (c) − (a) at 1: +10.0 ms (target ≤ 15: met)" in text
    assert "(c) ≥ (b) req/s: not at 1, 8, 32" in text
    assert "1.00 (1.00 … 1.00)" in text and "no haproxy binary" in text


def test_routing_counters_refuse_a_page_without_them() -> None:
    import pytest
    from routing_bench import _counters

    with pytest.raises(RuntimeError):
        _counters("# no engine metrics here\n")
    text = (
        "# TYPE vllm:prefix_cache_queries_total counter\n"
        'vllm:prefix_cache_queries_total{replica="r1"} 100\nvllm:prefix_cache_queries_total{replica="r2"} 50\n'
        "# TYPE vllm:prefix_cache_hits_total counter\n"
        'vllm:prefix_cache_hits_total{replica="r1"} 30\nvllm:prefix_cache_hits_total{replica="r2"} 20\n'
    )
    assert _counters(text) == {"vllm:prefix_cache_queries": 150.0, "vllm:prefix_cache_hits": 50.0}
