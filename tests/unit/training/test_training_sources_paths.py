"""The trainer refuses paths that would leave their mount, even after admission let them through."""

from __future__ import annotations

from pathlib import Path

import pytest

from bigmodel_training.errors import SourceError
from bigmodel_training.sources import local_path_of, mount_path


@pytest.fixture
def mount_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "mnt"
    (root / "data").mkdir(parents=True)
    monkeypatch.setenv("BIGMODEL_MOUNT_ROOT", str(root))
    return root


def test_pvc_path_inside_the_mount(mount_root: Path) -> None:
    assert mount_path("pvc://data/train.jsonl") == (mount_root / "data" / "train.jsonl").resolve()


@pytest.mark.parametrize("uri", ["pvc://data/../../etc/passwd", "pvc://adapters/../../../tmp/x", "pvc://data/a\x00b"])
def test_pvc_escape_refused(mount_root: Path, uri: str) -> None:
    with pytest.raises(SourceError, match="pvc://"):
        mount_path(uri)


def test_symlink_out_of_the_mount_refused(mount_root: Path, tmp_path: Path) -> None:
    (mount_root / "data" / "evil").symlink_to(tmp_path)
    with pytest.raises(SourceError, match="outside"):
        mount_path("pvc://data/evil/secret")


def test_file_uri_with_dotdot_refused() -> None:
    with pytest.raises(SourceError, match=r"'\.\.'"):
        local_path_of("file:///data/../etc/passwd")
    assert local_path_of("file:///data/train.jsonl") == Path("/data/train.jsonl")
