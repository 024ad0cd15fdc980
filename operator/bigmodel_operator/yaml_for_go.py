"""YAML that Go's YAML 1.1 readers (kubectl, Helm, KubeRay: sigs.k8s.io/yaml) read back as we wrote it.

PyYAML quotes the YAML 1.1 booleans yes/no/on/off/true/false, but not the one-letter ones `y`, `Y`, `n`,
`N`, which go-yaml v2 also reads as booleans. An unquoted key `n:` in a CRD's schema became the property
`"false"` when kubectl or Helm applied it, so the apiserver pruned every `n` the trainer wrote
(status.evaluation.comparisons[].n). This dumper quotes those four words wherever they appear.
"""

from __future__ import annotations

import math
import re
from typing import Any

import yaml

_GO_ONLY_BOOLS = re.compile(r"^(?:y|Y|n|N)$")


class GoSafeDumper(yaml.SafeDumper):
    """SafeDumper that also quotes y/Y/n/N."""


class GoCSafeDumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]
    """The same on libyaml's emitter (~10x faster; it folds long lines differently)."""


for _dumper in (GoSafeDumper, GoCSafeDumper):
    _dumper.add_implicit_resolver("tag:yaml.org,2002:bool", _GO_ONLY_BOOLS, list("yYnN"))


def dump(data: Any, *, sort_keys: bool, width: int | None = None, fast: bool = False) -> str:
    """`yaml.safe_dump` for documents a Go program reads (`fast`: libyaml's emitter)."""
    dumper = GoCSafeDumper if fast else GoSafeDumper
    out: str = yaml.dump(data, Dumper=dumper, sort_keys=sort_keys, width=width)
    return out


MEMO_SIZE = 256
_memo: dict[str, str] = {}
# No indicator at the start, no ": ", no space to fold at.
_PLAIN = re.compile(r"[A-Za-z0-9_/][A-Za-z0-9_./@+:-]*(?<!:)")
_STR = "tag:yaml.org,2002:str"


def _plain(text: str) -> bool:
    """Whether PyYAML writes `text` as is: a conservative shape, and not another type's (1.0, true, y, 2024-01-01)."""
    if _PLAIN.fullmatch(text) is None:  # the cheap test first: the resolver runs a regex per implicit type
        return False
    resolved: str = GoSafeDumper.resolve(GoSafeDumper, yaml.ScalarNode, text, (True, False))  # type: ignore[arg-type]
    return resolved == _STR


def _scalar(value: Any) -> str | None:
    """PyYAML's text for a scalar it would write without quotes; None for anything else."""
    kind = type(value)
    if kind is str:
        return value if _plain(value) else None
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is float:
        if math.isnan(value) or math.isinf(value):
            return None
        text = repr(value).lower()
        return text.replace("e", ".0e", 1) if "." not in text and "e" in text else text
    if value is None:
        return "null"
    return None


def _block(data: Any, indent: int, out: list[str]) -> bool:
    """Append the block-style lines of mapping `data` at `indent` (PyYAML's layout: keys sorted, a sequence
    under a key at the key's own indentation). False when something in it needs PyYAML's own care."""
    pad = " " * indent
    for key in sorted(data):
        if type(key) is not str or len(key) > 64 or not _plain(key):  # PyYAML writes a long key as `? key`
            return False
        value = data[key]
        if type(value) is dict and value:
            out.append(f"{pad}{key}:\n")
            if not _block(value, indent + 2, out):
                return False
        elif type(value) is list and value:
            out.append(f"{pad}{key}:\n")
            if not _items(value, indent, out):
                return False
        else:
            text = "{}" if value == {} and type(value) is dict else "[]" if value == [] else _scalar(value)
            if text is None:
                return False
            out.append(f"{pad}{key}: {text}\n")
    return True


def _items(items: list[Any], indent: int, out: list[str]) -> bool:
    pad = " " * indent
    for item in items:
        if type(item) is dict and item:
            nested: list[str] = []
            if not _block(item, indent + 2, nested):
                return False
            out.append(f"{pad}- {nested[0][indent + 2 :]}")
            out.extend(nested[1:])
            continue
        text = "{}" if type(item) is dict else "[]" if item == [] and type(item) is list else _scalar(item)
        if text is None:
            return False
        out.append(f"{pad}- {text}\n")
    return True


def dump_fast(data: dict[str, Any]) -> str:
    """`dump(data, sort_keys=True)` with the same text, several times faster, for the documents we render
    (mappings, lists, numbers and name-like strings); anything else goes through PyYAML."""
    out: list[str] = []
    if type(data) is dict and data and _block(data, 0, out):
        return "".join(out)
    return dump(data, sort_keys=True, fast=True)


def dump_memo(data: Any) -> str:
    """`dump(data, sort_keys=True, fast=True)`, remembered for the last MEMO_SIZE documents: a RayService's
    serveConfigV2 is rendered on every reconcile of its BigModel, and PyYAML's representer (pure Python) was a
    few percent of the operator's CPU in a burst of creates (issue 21), and half of a new BigModel's time to its
    RayService write (0.5 of 1.1 ms): `dump_fast` writes the same text. The key is the document's repr, which
    tells 1, 1.0, True and "1" apart (a JSON key would not tell an int key from a string key)."""
    key = repr(data)
    out = _memo.pop(key, None)
    if out is None:
        out = dump_fast(data)
        if len(_memo) >= MEMO_SIZE:
            del _memo[next(iter(_memo))]  # the least recently used: hits move to the end
    _memo[key] = out
    return out
