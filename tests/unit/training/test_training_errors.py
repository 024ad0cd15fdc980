"""The termination message the operator reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bigmodel_training.errors import MAX_MESSAGE_BYTES, TERMINATION_LOG_ENV, write_termination_message


def test_termination_message_is_one_json_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(target))
    write_termination_message("DatasetInvalid", "line 3: bad_json: ...")
    lines = target.read_text().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0]) == {"reason": "DatasetInvalid", "message": "line 3: bad_json: ..."}


def test_long_messages_are_cut_to_fit_the_kubelet_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "termination-log"
    monkeypatch.setenv(TERMINATION_LOG_ENV, str(target))
    write_termination_message("Error", "é" * 10_000)
    assert len(target.read_bytes()) < 4096
    assert json.loads(target.read_text())["message"].endswith("...")
    assert MAX_MESSAGE_BYTES < 4096


def test_an_unwritable_path_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TERMINATION_LOG_ENV, "/nonexistent/dir/termination-log")
    write_termination_message("Error", "boom")  # must not raise
