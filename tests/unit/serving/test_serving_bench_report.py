"""docs/benchmarks.md: only the "## Serving path" section is ours to replace."""

from __future__ import annotations

from pathlib import Path

from bigmodel_serving.bench_client import percentile
from bigmodel_serving.bench_report import replace_section


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


def test_report_checks_the_targets_against_the_bare_ray_app() -> None:
    from bigmodel_serving.bench_report import render_section

    run = {
        "model": "tiny",
        "parameters": 1_500_000,
        "ready_s": 60,
        "seconds": 200,
        "load": {
            "1": {"a": _stats(10.0, 20.0), "b": _stats(9.0, 22.0), "c": _stats(8.9, 24.0)},
            "8": {"a": _stats(40.0, 30.0), "b": _stats(30.0, 35.0), "c": _stats(20.0, 45.0)},
        },
        "quota": {"actor_p50_ms": 0.3, "actor_p99_ms": 0.9, "in_process_p50_ms": 0.002},
    }
    text = render_section([run, {"model": "m100", "failed": 1}], machine="m", date="d", engine_kwargs={"x": 1})
    assert "| 1 | 0.989 | yes | 2 | yes | 0.89 |" in text  # within 5% and 3 ms of (b)
    assert "| 8 | 0.667 | **no** | 10 | **no** | 0.5 |" in text
    assert "p50 0.3 ms (yes)" in text
    assert "### Model `m100`" in text and "failed (exit code 1)" in text
