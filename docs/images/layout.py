#!/usr/bin/env python3
"""The image cache of docs/images.sh: one OCI image layout (the OCI image-spec's directory format).

    layout.py has LAYOUT NAME             exit 0 when LAYOUT's index names NAME, else 1
    layout.py keep LAYOUT BUILD=TAG...    tag each BUILD as TAG too; drop every other name of those
                                          repositories; delete the blobs nothing names any more

skopeo writes the images into the layout (`skopeo copy ... oci:LAYOUT:NAME`); this only edits index.json and
removes unreferenced blobs, a mark and sweep over index -> manifest -> config and layers, in well under a second.
(umoci's tag, rm and gc did this first and took 5.7 min after three cached builds of a 7.8 GB layout on the
2-core machine, 2026-12-06.) Standard library only.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

REF = "org.opencontainers.image.ref.name"


def _name(entry: dict) -> str:
    return str(entry.get("annotations", {}).get(REF, ""))


def _repo(name: str) -> str:
    return name.rsplit(":", 1)[0]


def _blob(layout: Path, digest: str) -> Path:
    algorithm, hexdigest = digest.split(":", 1)
    return layout / "blobs" / algorithm / hexdigest


def keep(layout: Path, pairs: list[tuple[str, str]]) -> list[Path]:
    """Tag, drop the other names of the repositories in `pairs`, sweep; return the blobs removed."""
    index = json.loads((layout / "index.json").read_text())
    entries = {_name(m): m for m in index["manifests"]}
    repos = {_repo(build) for build, _ in pairs}
    kept = [m for m in index["manifests"] if _repo(_name(m)) not in repos]
    for build, tag in pairs:
        if build not in entries:
            raise SystemExit(f"{layout} has no image {build}")
        kept.append(entries[build])
        if tag != build:
            kept.append({**entries[build], "annotations": {**entries[build].get("annotations", {}), REF: tag}})
    index["manifests"] = kept
    partial = layout / "index.json.partial"
    partial.write_text(json.dumps(index))
    os.replace(partial, layout / "index.json")
    live = set()
    for entry in kept:
        manifest = json.loads(_blob(layout, entry["digest"]).read_text())
        live |= {entry["digest"], manifest["config"]["digest"], *(layer["digest"] for layer in manifest["layers"])}
    removed = [p for p in (layout / "blobs" / "sha256").iterdir() if f"sha256:{p.name}" not in live]
    for path in removed:
        path.unlink()
    return removed


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "has":
        index = Path(argv[1]) / "index.json"
        names = {_name(m) for m in json.loads(index.read_text())["manifests"]} if index.exists() else set()
        return 0 if argv[2] in names else 1
    if len(argv) >= 3 and argv[0] == "keep":
        pairs = [tuple(arg.split("=", 1)) for arg in argv[2:]]
        removed = keep(Path(argv[1]), [(build, tag) for build, tag in pairs])
        print(f"{argv[1]}: {len(removed)} unreferenced blobs removed")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
