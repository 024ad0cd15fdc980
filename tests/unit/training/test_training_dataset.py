"""Dataset validation: every defect type is caught, with its line number; the file is untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from bigmodel_training import dataset
from bigmodel_training.cli import main
from bigmodel_training.dataset import Example, check_lengths, validate_file


def chat(*turns: tuple[str, str]) -> str:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns]})


GOOD_CHAT = chat(("user", "hi"), ("assistant", "hello"))


def write(tmp_path: Path, lines: list[str | bytes]) -> Path:
    path = tmp_path / "data.jsonl"
    path.write_bytes(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")
    return path


# (format, the bad line, expected defect code); the bad line is always line 2, after a good one.
CASES = [
    ("chat", b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', dataset.ENCODING),
    ("chat", '{"messages": [', dataset.BAD_JSON),
    ("chat", '["a list"]', dataset.NOT_OBJECT),
    ("chat", '{"conversation": []}', dataset.MISSING_KEY),
    ("chat", '{"messages": "hi"}', dataset.WRONG_TYPE),
    ("chat", '{"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}', dataset.MISSING_KEY),
    (
        "chat",
        '{"messages": [{"role": "user", "content": 5}, {"role": "assistant", "content": "x"}]}',
        dataset.WRONG_TYPE,
    ),
    ("chat", chat(("human", "hi"), ("assistant", "x")), dataset.UNKNOWN_ROLE),
    ("chat", chat(("assistant", "x"), ("user", "hi")), dataset.ROLE_ORDER),
    ("chat", chat(("user", "a"), ("user", "b"), ("assistant", "c")), dataset.ROLE_ORDER),
    ("chat", chat(("user", "a"), ("assistant", "b"), ("user", "c")), dataset.ROLE_ORDER),
    ("chat", chat(("user", "a"), ("system", "s"), ("assistant", "b")), dataset.ROLE_ORDER),
    ("chat", chat(("system", "only a system prompt")), dataset.ROLE_ORDER),
    ("chat", chat(("user", "  "), ("assistant", "b")), dataset.EMPTY_CONTENT),
    ("chat", '{"messages": []}', dataset.EMPTY_CONTENT),
    ("chat", GOOD_CHAT, dataset.DUPLICATE),
    ("instruction", '{"input": "x", "output": "y"}', dataset.MISSING_KEY),
    ("instruction", '{"instruction": "x", "output": ""}', dataset.EMPTY_CONTENT),
    ("instruction", '{"instruction": "x", "input": 3, "output": "y"}', dataset.WRONG_TYPE),
    ("completion", '{"prompt": "x"}', dataset.MISSING_KEY),
    ("completion", '{"prompt": "x", "completion": " "}', dataset.EMPTY_CONTENT),
    ("completion", '{"prompt": null, "completion": "y"}', dataset.WRONG_TYPE),
]
GOOD = {
    "chat": GOOD_CHAT,
    "instruction": '{"instruction": "Add", "input": "1 1", "output": "2"}',
    "completion": '{"prompt": "1 + 1 =", "completion": " 2"}',
}


@pytest.mark.parametrize(("fmt", "bad", "code"), CASES, ids=[f"{c[0]}-{i}-{c[2]}" for i, c in enumerate(CASES)])
def test_each_defect_is_reported_with_its_line(tmp_path: Path, fmt: str, bad: str | bytes, code: str) -> None:
    path = write(tmp_path, [GOOD[fmt], bad])
    result = validate_file(path, fmt)  # type: ignore[arg-type]
    assert [(d.line, d.code) for d in result.defects] == [(2, code)], result.report()
    assert len(result.examples) == 1
    assert "line 2" in result.report()


def test_all_defects_are_collected_and_the_file_is_untouched(tmp_path: Path) -> None:
    lines: list[str | bytes] = [GOOD_CHAT, "{oops", "", chat(("assistant", "x")), b"\xff\xfe", GOOD_CHAT]
    path = write(tmp_path, lines)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    result = validate_file(path, "chat", min_examples=5)
    found = sorted((d.line, d.code) for d in result.defects)
    assert found == [
        (0, dataset.TOO_FEW),
        (2, dataset.BAD_JSON),
        (4, dataset.ROLE_ORDER),
        (5, dataset.ENCODING),
        (6, dataset.DUPLICATE),
    ]
    assert "duplicate of line 1" in result.report()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before


def test_report_is_capped_with_a_count(tmp_path: Path) -> None:
    path = write(tmp_path, ["{bad"] * 80)
    report = validate_file(path, "chat").report(limit=50)
    assert report.count("bad_json") == 49  # the file-level too_few sorts first
    assert "... and 31 more defect(s)" in report  # 80 bad lines + too_few


def test_valid_formats_and_conversions(tmp_path: Path) -> None:
    path = write(tmp_path, ["\ufeff" + GOOD_CHAT, chat(("system", "s"), ("user", "u"), ("assistant", "a"))])
    assert validate_file(path, "chat").ok
    path = write(tmp_path, [GOOD["instruction"], '{"instruction": "Say hi", "output": "hi"}'])
    result = validate_file(path, "instruction")
    assert result.ok
    assert result.examples[0].messages == [
        {"role": "user", "content": "Add\n\n1 1"},
        {"role": "assistant", "content": "2"},
    ]
    path = write(tmp_path, [GOOD["completion"], '{"prompt": "", "completion": "free text"}'])
    assert validate_file(path, "completion").ok


def test_length_check_is_a_second_pass() -> None:
    examples = [Example(3, prompt="a", completion="b" * 10), Example(7, prompt="a", completion="b")]
    defects = check_lengths(examples, lambda e: len((e.prompt or "") + (e.completion or "")), 5)
    assert [(d.line, d.code) for d in defects] == [(3, dataset.TOO_LONG)]
    assert "11 tokens" in defects[0].message


def test_validate_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, [GOOD_CHAT])
    assert main(["validate", str(good), "--format", "chat"]) == 0
    assert "dataset OK" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text(GOOD_CHAT + "\n{x\n")
    assert main(["validate", str(bad), "--format", "chat"]) == 3
    assert "line 2: bad_json" in capsys.readouterr().out


def test_a_lone_surrogate_is_an_encoding_defect_with_its_line(tmp_path: Path) -> None:
    # Valid JSON, valid UTF-8 bytes, but "\ud800" decodes to half a UTF-16 pair: not a character.
    bad = '{"messages": [{"role": "user", "content": "a\\ud800b"}, {"role": "assistant", "content": "x"}]}'
    path = write(tmp_path, [GOOD_CHAT, bad])
    result = validate_file(path, "chat")
    assert [(d.line, d.code) for d in result.defects] == [(2, dataset.ENCODING)]
    assert "lone surrogate \\ud800" in result.report()


def test_a_lone_surrogate_fails_the_run_as_dataset_invalid(tmp_path: Path) -> None:
    from bigmodel_training.data import load_and_validate
    from bigmodel_training.errors import DatasetError

    path = write(tmp_path, ['{"prompt": "p", "completion": "ok"}', '{"prompt": "\\udfff", "completion": "c"}'])
    with pytest.raises(DatasetError) as caught:
        load_and_validate(path, "completion", 1)
    assert caught.value.reason == "DatasetInvalid"
    assert "line 2: encoding" in str(caught.value)


def test_an_over_long_line_is_reported_without_being_read_whole(tmp_path: Path) -> None:
    huge = json.dumps({"prompt": "p", "completion": "x" * 50_000})
    path = write(tmp_path, [GOOD["completion"], huge, '{"prompt": "q", "completion": "fine"}', huge])
    result = validate_file(path, "completion", max_line_bytes=4096)
    assert [(d.line, d.code) for d in result.defects] == [(2, dataset.LINE_TOO_LARGE), (4, dataset.LINE_TOO_LARGE)]
    assert len(result.examples) == 2  # the lines after the long one are still read, with the right numbers
    assert "max_line_bytes 4096" in result.report()


def test_a_line_exactly_at_the_limit_is_read(tmp_path: Path) -> None:
    line = json.dumps({"prompt": "p", "completion": "y" * 100})
    path = write(tmp_path, [line.encode()])
    assert validate_file(path, "completion", max_line_bytes=len(line)).ok
    assert validate_file(path, "completion", max_line_bytes=len(line) - 1).defects[0].code == dataset.LINE_TOO_LARGE


def test_an_over_large_file_is_refused_before_parsing(tmp_path: Path) -> None:
    lines: list[str | bytes] = [GOOD_CHAT, GOOD_CHAT, GOOD_CHAT, "{not json"]
    path = write(tmp_path, lines)
    result = validate_file(path, "chat", max_file_bytes=64)
    assert [(d.line, d.code) for d in result.defects] == [(0, dataset.FILE_TOO_LARGE)]
    assert "maxFileBytes" in result.report()
