"""Paths that must stay inside their mount, and URIs without hidden characters: one rule for all.

`path_problem` decodes first (percent-escapes, repeatedly; backslashes as separators; Unicode
compatibility forms such as the fullwidth full stop), then looks for a `..` segment or a control
character in every decoded form. `resolve_inside` and `resolve_local` add what only the reader of a
file can check: the path with symlinks resolved must still lie inside the mount.

`uri_text_problem` refuses any Unicode whitespace, control, format (zero-width, bidi override),
surrogate or private-use character: a URI never needs one, and a non-breaking space or a
right-to-left override makes two different locations look the same in `kubectl get`.
"""

from __future__ import annotations

import unicodedata
from pathlib import Path
from urllib.parse import unquote, urlsplit

MAX_DECODE_ROUNDS = 4
"""Percent-decoding is repeated until nothing changes; more rounds than this are refused outright."""
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Co", "Cs", "Zs", "Zl", "Zp"})
"""Unicode categories never allowed in a URI: controls, format, private use, surrogates, separators."""


class PathEscapeError(ValueError):
    """A path that would leave its mount (a `..` segment, a symlink outside) or hides characters."""


def decoded_forms(text: str) -> list[str] | None:
    """`text` and each percent-decoding of it until it stops changing; None past MAX_DECODE_ROUNDS."""
    forms = [text]
    for _ in range(MAX_DECODE_ROUNDS):
        nxt = unquote(forms[-1], errors="surrogateescape")
        if nxt == forms[-1]:
            return forms
        forms.append(nxt)
    return None


def _segments(text: str) -> list[str]:
    return unicodedata.normalize("NFKC", text).replace("\\", "/").split("/")


def path_problem(value: str) -> str | None:
    """Why `value` could leave its mount, or None: a `..` segment or a NUL/control character in any
    decoded form (%2e%2e, %252e%252e, `..\\`, fullwidth dots all count)."""
    forms = decoded_forms(value)
    if forms is None:
        return f"{value!r} is percent-encoded more than {MAX_DECODE_ROUNDS} times"
    for form in forms:
        if any(unicodedata.category(ch) == "Cc" for ch in form):
            return f"{value!r} contains a control character (NUL, newline, ...)"
        if ".." in _segments(form):
            return f"{value!r} has a '..' segment (decoded: {form!r}); paths must stay inside their mount"
    return None


def check_path(value: str) -> str:
    """`value` unchanged, or PathEscapeError saying why it could leave its mount."""
    problem = path_problem(value)
    if problem:
        raise PathEscapeError(problem)
    return value


def uri_text_problem(value: str) -> str | None:
    """Why `value` is not a clean URI, or None: the first whitespace or invisible character, named."""
    for position, ch in enumerate(value):
        if ch.isspace() or unicodedata.category(ch) in HIDDEN_CATEGORIES:
            name = unicodedata.name(ch, "") or unicodedata.category(ch)
            return (
                f"contains U+{ord(ch):04X} {name} at position {position}: URIs may not hold whitespace or "
                "control characters"
            )
    return None


def check_uri(value: str) -> str:
    """A URI refused for hidden characters or a `..` segment (ValueError), else `value` unchanged."""
    problem = uri_text_problem(value) or path_problem(value)
    if problem:
        raise PathEscapeError(problem)
    return value


def resolve_inside(root: str | Path, relative: str) -> Path:
    """`root / relative` with symlinks resolved, refusing anything that lies outside `root`."""
    check_path(relative)
    base = Path(root).resolve()
    target = (base / relative.lstrip("/")).resolve()
    if target != base and base not in target.parents:
        raise PathEscapeError(f"path {relative!r} resolves to {target}, outside {base}")
    return target


def resolve_local(uri: str, local_path: str | None) -> Path | None:
    """The real local path of a location, or None when it is remote (hf://, s3://, ...).

    - pvc://claim/sub mounted at `local_path` (…/claim/sub): resolved inside the claim's mount, so a
      symlink on the volume that points elsewhere is refused;
    - file:///path: a path in the image (the image's own symlinks are the image author's choice);
    - any other `local_path` (a download the workload staged): checked, not re-rooted.
    """
    check_path(uri)
    parts = urlsplit(uri)
    if local_path is not None:
        check_path(local_path)
        if parts.scheme == "pvc":
            sub = parts.path.strip("/")
            trimmed = local_path.rstrip("/")
            if sub and trimmed.endswith("/" + sub):
                return resolve_inside(trimmed[: -len(sub)], sub)
            return resolve_inside(trimmed or "/", "")
        return Path(local_path)
    if parts.scheme == "file":
        return Path(unquote(parts.path))
    return None
