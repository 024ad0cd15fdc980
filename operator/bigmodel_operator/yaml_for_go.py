"""YAML that Go's YAML 1.1 readers (kubectl, Helm, KubeRay: sigs.k8s.io/yaml) read back as we wrote it.

PyYAML quotes the YAML 1.1 booleans yes/no/on/off/true/false, but not the one-letter ones `y`, `Y`, `n`,
`N`, which go-yaml v2 also reads as booleans. An unquoted key `n:` in a CRD's schema became the property
`"false"` when kubectl or Helm applied it, so the apiserver pruned every `n` the trainer wrote
(status.evaluation.comparisons[].n). This dumper quotes those four words wherever they appear.
"""

from __future__ import annotations

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


def dump_memo(data: Any) -> str:
    """`dump(data, sort_keys=True, fast=True)`, remembered for the last MEMO_SIZE documents: a RayService's
    serveConfigV2 is rendered on every reconcile of its BigModel, and PyYAML's representer (pure Python) was a
    few percent of the operator's CPU in a burst of creates (issue 21). The key is the document's repr, which
    tells 1, 1.0, True and "1" apart (a JSON key would not tell an int key from a string key)."""
    key = repr(data)
    out = _memo.pop(key, None)
    if out is None:
        out = dump(data, sort_keys=True, fast=True)
        if len(_memo) >= MEMO_SIZE:
            del _memo[next(iter(_memo))]  # the least recently used: hits move to the end
    _memo[key] = out
    return out
