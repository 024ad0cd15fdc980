"""Paths that must stay inside their mount: the check the workloads repeat after admission.

The CRDs refuse `..` segments (CEL) and the operator refuses them again when it parses a spec; the
serving app and the trainer resolve every path they open with `resolve_inside`, which also catches a
symlink on the volume that points outside it. Pure and dependency-free so that the workload packages
can carry the same ten lines (they do not import the operator).
"""

from __future__ import annotations

from pathlib import Path


class PathEscapeError(ValueError):
    """A path that would leave its mount (a `..` segment, an absolute path, a symlink outside)."""


def resolve_inside(root: str | Path, relative: str) -> Path:
    """`root / relative`, resolved (symlinks followed), refusing anything outside `root`."""
    if "\x00" in relative:
        raise PathEscapeError(f"path {relative!r} contains a NUL byte")
    if any(part == ".." for part in relative.replace("\\", "/").split("/")):
        raise PathEscapeError(f"path {relative!r} has a '..' segment")
    base = Path(root).resolve()
    target = (base / relative.lstrip("/")).resolve()
    if target != base and base not in target.parents:
        raise PathEscapeError(f"path {relative!r} resolves to {target}, outside {base}")
    return target
