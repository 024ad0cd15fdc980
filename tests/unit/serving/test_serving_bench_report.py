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
