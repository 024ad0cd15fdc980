"""API keys: parsing, rotation through a Kubernetes-style `..data` symlink swap, fail closed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bigmodel_serving.auth import ApiKeyStore, bearer_token, parse_keys


def test_parse_keys_skips_comments_and_blanks() -> None:
    assert parse_keys("# rotated 2026-01\nkey-one\n\n  key-two  \n#old-key\n") == {"key-one", "key-two"}


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc", "abc"), ("bearer  abc ", "abc"), ("Basic abc", None), ("Bearer ", None), (None, None)],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def _secret_volume(root: Path, version: str, keys: str) -> Path:
    """Lay out a Secret volume the way the kubelet does: keys -> ..data/keys, ..data -> ..<version>."""
    (root / f"..{version}").mkdir()
    (root / f"..{version}" / "keys").write_text(keys)
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(f"..{version}")
    os.replace(tmp_link, root / "..data")  # atomic swap, as the kubelet does
    if not (root / "keys").exists():
        (root / "keys").symlink_to("..data/keys")
    return root / "keys"


def test_rotation_through_symlink_swap(tmp_path: Path) -> None:
    keys_file = _secret_volume(tmp_path, "v1", "old-key\n")
    store = ApiKeyStore(keys_file)
    assert store.is_valid("old-key")
    _secret_volume(tmp_path, "v2", "new-key\n")
    assert store.is_valid("new-key")
    assert not store.is_valid("old-key")


def test_rewrite_in_place_is_noticed(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("a\n")
    store = ApiKeyStore(keys_file)
    keys_file.write_text("b-longer\n")
    assert store.is_valid("b-longer")
    assert not store.is_valid("a")


def test_missing_file_refuses_every_key(tmp_path: Path) -> None:
    store = ApiKeyStore(tmp_path / "absent")
    assert store.key_count() == 0
    assert not store.is_valid("anything")
    assert not store.is_valid("")


def test_unchanged_file_is_not_reread(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("k\n")
    store = ApiKeyStore(keys_file)
    assert store.reload_if_changed() is False


def test_keys_never_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("super-secret-key\n")
    with caplog.at_level("DEBUG"):
        ApiKeyStore(keys_file).is_valid("super-secret-key")
    assert "super-secret-key" not in caplog.text
