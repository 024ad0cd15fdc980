"""resolve_inside: the workloads' check that a path stays inside its mount (issue 10, item 2)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bigmodel_operator.safe_paths import PathEscapeError, resolve_inside


@pytest.mark.parametrize("bad", ["../../../etc", "a/../../b", "..", "x/..", "a\\..\\b", "a\x00b"])
def test_parent_segments_and_nul_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(PathEscapeError):
        resolve_inside(tmp_path, bad)


def test_a_symlink_out_of_the_mount_is_refused(tmp_path: Path) -> None:
    mount = tmp_path / "mount"
    mount.mkdir()
    os.symlink("/etc", mount / "escape")
    with pytest.raises(PathEscapeError):
        resolve_inside(mount, "escape/passwd")


def test_paths_inside_are_resolved(tmp_path: Path) -> None:
    (tmp_path / "models" / "llama").mkdir(parents=True)
    assert resolve_inside(tmp_path, "models/llama") == (tmp_path / "models" / "llama").resolve()
    assert resolve_inside(tmp_path, "/models/llama") == (tmp_path / "models" / "llama").resolve()
    assert resolve_inside(tmp_path, "") == tmp_path.resolve()
    assert resolve_inside(tmp_path, "a..b") == (tmp_path / "a..b").resolve()
