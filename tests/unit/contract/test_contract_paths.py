"""bigmodel_contract.safe_paths: the one path rule of the operator, the serving app and the trainer
(issue 21): decode first (percent-escapes, backslashes, compatibility forms), then check; symlinks
resolved where files are read. The CEL half (api/base.py PARENT_SEGMENT_RE2) must refuse at least the
common encodings the function refuses."""

from __future__ import annotations

import ast
import os
import re
import sys
from pathlib import Path

import pytest

from bigmodel_contract import safe_paths
from bigmodel_contract.safe_paths import (
    PathEscapeError,
    check_uri,
    path_problem,
    resolve_inside,
    resolve_local,
    uri_text_problem,
)
from bigmodel_operator.api.base import PARENT_SEGMENT_RE2

ESCAPES = [
    "../../../etc",
    "a/../../b",
    "..",
    "x/..",
    "a\\..\\b",
    "pvc://models/%2e%2e/x",
    "pvc://models/%2E%2e/x",
    "pvc://models/.%2e/x",
    "pvc://models/%252e%252e/x",
    "pvc://models%2f..%2fx",
    "pvc://models%5c..%5cx",
    "pvc://models/．．/x",
    "pvc://models/‥/x",
    "pvc://models/..\\x",
    "hf://../..",
    "file:///models/..",
]
FINE = ["pvc://models/llama..v2", "s3://b/..hidden/x", "pvc://m/a.b/c", "hf://org/name", "a..b", "pvc://m/%41/x", ""]


@pytest.mark.parametrize("value", ESCAPES)
def test_parent_segments_are_refused_in_every_encoding(value: str) -> None:
    assert path_problem(value), value
    assert re.search(PARENT_SEGMENT_RE2, value), f"the CEL rule misses {value!r}"


@pytest.mark.parametrize("value", FINE)
def test_dots_inside_names_pass(value: str) -> None:
    assert path_problem(value) is None
    assert not re.search(PARENT_SEGMENT_RE2, value)


@pytest.mark.parametrize("value", ["a\x00b", "a%00b", "x/%0a/y", "a%2500b"])
def test_control_characters_are_refused_also_encoded(value: str) -> None:
    assert "control character" in (path_problem(value) or "")


def test_endless_encodings_are_refused() -> None:
    assert "more than" in (path_problem("a/%" + "25" * 6 + "2e") or "")


@pytest.mark.parametrize(
    ("value", "codepoint"),
    [
        ("hf://org/na\u00a0me", "U+00A0"),
        ("hf://org/name\u200b", "U+200B"),
        ("pvc://m/\u202egnp.x", "U+202E"),
        ("s3://b/k\tx", "U+0009"),
        ("s3://b/k\u2028x", "U+2028"),
        ("s3://b/k\ufeff", "U+FEFF"),
        ("s3://b/k x", "U+0020"),
        ("s3://b/k\u3000x", "U+3000"),
        ("s3://b/k\ue000", "U+E000"),
    ],
)
def test_hidden_characters_in_uris_are_named(value: str, codepoint: str) -> None:
    problem = uri_text_problem(value)
    assert problem and codepoint in problem, problem
    with pytest.raises(PathEscapeError):
        check_uri(value)


def test_clean_uris_pass() -> None:
    for value in ("hf://org/name", "s3://bucket/a%20b/c", "https://example.com/d.jsonl?x=1#y", "pvc://m/ünïcode"):
        assert check_uri(value) == value


@pytest.mark.parametrize("bad", ["../../../etc", "a/../../b", "..", "x/..", "a\\..\\b", "a\x00b", "%2e%2e/x"])
def test_resolve_inside_refuses_escapes(tmp_path: Path, bad: str) -> None:
    with pytest.raises(PathEscapeError):
        resolve_inside(tmp_path, bad)


def test_a_symlink_out_of_the_mount_is_refused(tmp_path: Path) -> None:
    mount = tmp_path / "mount"
    mount.mkdir()
    os.symlink("/etc", mount / "escape")
    with pytest.raises(PathEscapeError, match="outside"):
        resolve_inside(mount, "escape/passwd")


def test_paths_inside_are_resolved(tmp_path: Path) -> None:
    (tmp_path / "models" / "llama").mkdir(parents=True)
    assert resolve_inside(tmp_path, "models/llama") == (tmp_path / "models" / "llama").resolve()
    assert resolve_inside(tmp_path, "/models/llama") == (tmp_path / "models" / "llama").resolve()
    assert resolve_inside(tmp_path, "") == tmp_path.resolve()
    assert resolve_inside(tmp_path, "a..b") == (tmp_path / "a..b").resolve()


def test_resolve_local_keeps_a_pvc_inside_its_claim(tmp_path: Path) -> None:
    claim = tmp_path / "pvc" / "models"
    (claim / "llama").mkdir(parents=True)
    os.symlink(tmp_path, claim / "up")
    assert resolve_local("pvc://models/llama", f"{claim}/llama") == (claim / "llama").resolve()
    with pytest.raises(PathEscapeError, match="outside"):
        resolve_local("pvc://models/up/pvc", f"{claim}/up/pvc")
    with pytest.raises(PathEscapeError):
        resolve_local("pvc://models/llama", f"{claim}/%2e%2e/x")
    assert resolve_local("file:///opt/models/a%20b", None) == Path("/opt/models/a b")
    assert resolve_local("s3://bucket/x", None) is None


def test_the_contract_imports_only_the_standard_library() -> None:
    root = Path(safe_paths.__file__).parent
    for module in root.glob("*.py"):
        for node in ast.walk(ast.parse(module.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom) and node.level == 0
                else []
            )
            for name in names:
                top = name.split(".")[0]
                assert top in sys.stdlib_module_names or top in {"__future__", "bigmodel_contract"}, (module, name)
