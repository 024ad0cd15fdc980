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


def test_an_operator_mounted_local_path_is_resolved_inside_its_claim(tmp_path: Path) -> None:
    """Issue 21: `local_path` (set by the operator) goes through the same rule, symlinks resolved."""
    import os

    from bigmodel_training.config import DatasetSource
    from bigmodel_training.sources import resolve_dataset_file

    claim = tmp_path / "pvc" / "data"
    claim.mkdir(parents=True)
    (tmp_path / "secret.jsonl").write_text("{}\n")
    os.symlink(tmp_path / "secret.jsonl", claim / "train.jsonl")
    source = DatasetSource(uri="pvc://data/train.jsonl", format="chat", local_path=f"{claim}/train.jsonl")
    with pytest.raises(SourceError, match="outside"):
        resolve_dataset_file(source, None, tmp_path / "scratch")


@pytest.mark.parametrize("uri", ["pvc://data/%2e%2e/x.jsonl", "file:///data/..%5cx", "s3://b/k\u00a0x"])
def test_the_trainer_config_refuses_encoded_escapes_and_hidden_characters(uri: str) -> None:
    from pydantic import ValidationError

    from bigmodel_training.config import DatasetSource

    with pytest.raises(ValidationError):
        DatasetSource(uri=uri, format="chat")
