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
