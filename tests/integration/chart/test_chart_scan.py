"""A static security scan of the rendered chart with checkov (from PyPI, in its own cached venv)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import charttools, dump_all

WAIVERS = Path(__file__).with_name("checkov-waivers.yaml")


@pytest.fixture(scope="session")
def checkov() -> str:
    try:
        return str(charttools.build_checkov())
    except SystemExit as error:
        pytest.skip(f"cannot install checkov: {error}")


def test_checkov_fails_exactly_the_written_waivers(
    checkov: str, render: Callable[..., list[dict[str, Any]]], tmp_path: Path
) -> None:
    variants = yaml.safe_load(WAIVERS.read_text())
    runs = {}
    for name, variant in variants.items():
        folder = tmp_path / name
        folder.mkdir()
        (folder / "chart.yaml").write_text(dump_all(render(*variant["values"], release="bigmodel-operator")))
        argv = [checkov, "--directory", str(folder), "--framework", "kubernetes", "--output", "json"]
        argv.append("--skip-download")  # no calls to Prisma Cloud for guidelines
        runs[name] = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for name, proc in runs.items():
        out, err = proc.communicate(timeout=240)
        report = json.loads(out)
        results = report["results"] if isinstance(report, dict) else {}
        assert results.get("passed_checks"), f"checkov checked nothing in variant {name}: {out[:500]} {err[-2000:]}"
        failed = {c["check_id"]: f"{c['check_name']} ({c['resource']})" for c in results.get("failed_checks", [])}
        waived = set(variants[name]["waivers"])
        unwaived = {check: what for check, what in failed.items() if check not in waived}
        assert not unwaived, f"checkov, variant {name}, failed without a waiver: {unwaived}"
        assert waived <= set(failed), f"variant {name}: stale waivers (the check passes now): {waived - set(failed)}"
