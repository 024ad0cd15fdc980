#!/usr/bin/env python3
"""Export a buildah image as an OCI archive that reuses the compressed layers of an earlier archive.

    thin_export.py IMAGE OUT.oci.tar --ref NAME:TAG --reuse FULL.oci.tar [--reuse ...]

`buildah push` recompresses every layer on every export: for the serving image that is a 8 GB pip layer,
~10 minutes on a 2-core machine, after any one-line code change. Here the layers whose uncompressed digest
(diff_id) already sits in a `--reuse` archive are referenced by that archive's compressed descriptor and
left out of OUT; only the new layers (our code: a few MB) are written, gzip-compressed. The layer bytes
come from containers-storage itself (the layer's tar-split record and its files, exactly the tar buildah
made, checked against its diff_id), so the image config is buildah's, byte for byte.

OUT is importable where the reused blobs already are: `tests/cluster/node.py import` reads the annotation
`bigmodel.io/base-archive` on OUT's index and imports that archive first when the blobs are missing.
Exit status 3: fewer than --min-reuse of the bytes could be reused (a dependency change); the caller
then exports the whole image with `buildah push`. Python's standard library only.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, BinaryIO

STORAGE = Path("/var/lib/containers/storage")
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
GZIP_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
BASE_ANNOTATION = "bigmodel.io/base-archive"


def archive_layers(archive: Path) -> dict[str, dict[str, Any]]:
    """diff_id -> the compressed layer descriptor, for every image in an OCI archive."""
    out: dict[str, dict[str, Any]] = {}
    with tarfile.open(archive) as tar:

        def blob(digest: str) -> Any:
            member = tar.extractfile(f"blobs/sha256/{digest.split(':', 1)[1]}")
            assert member is not None, digest
            return json.load(member)

        index = json.load(tar.extractfile("index.json"))  # type: ignore[arg-type]
        for entry in index["manifests"]:
            manifest = blob(entry["digest"])
            diff_ids = blob(manifest["config"]["digest"])["rootfs"]["diff_ids"]
            for diff_id, layer in zip(diff_ids, manifest["layers"], strict=True):
                out[diff_id] = layer
    return out


def storage_layer(diff_id: str) -> str:
    """The containers-storage layer id whose uncompressed digest is diff_id (one with a tar-split)."""
    layers = json.loads((STORAGE / "overlay-layers" / "layers.json").read_text())
    for layer in layers:
        if (
            layer.get("diff-digest") == diff_id
            and (STORAGE / "overlay-layers" / f"{layer['id']}.tar-split.gz").exists()
        ):
            return str(layer["id"])
    raise SystemExit(f"no containers-storage layer with tar-split for {diff_id}")


def write_layer_tar(layer_id: str, out: BinaryIO) -> None:
    """Replay the layer's tar-split: raw segments (headers, padding) from the record, file bodies from disk."""
    root = STORAGE / "overlay" / layer_id / "diff"
    with gzip.open(STORAGE / "overlay-layers" / f"{layer_id}.tar-split.gz", "rt") as record:
        for line in record:
            entry = json.loads(line)
            if entry["type"] == 2:
                out.write(base64.b64decode(entry.get("payload") or ""))
            elif entry.get("size"):
                name = base64.b64decode(entry["name_raw"]) if "name_raw" in entry else entry["name"].encode()
                with open(root / name.decode("utf-8", "surrogateescape").lstrip("/"), "rb") as body:
                    left = entry["size"]
                    while left:
                        chunk = body.read(min(left, 1 << 20))
                        assert chunk, f"{name!r} is shorter than its tar-split entry"
                        out.write(chunk)
                        left -= len(chunk)


class Hashing(io.RawIOBase):
    """A writable sink that hashes (and counts) what passes through to an optional file."""

    def __init__(self, target: BinaryIO | None = None) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.target = target

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.sha.update(data)
        self.size += len(data)
        if self.target is not None:
            self.target.write(data)
        return len(data)


def compressed_layer(diff_id: str) -> tuple[bytes, dict[str, Any]]:
    """The layer gzip-compressed (checked against diff_id) and its descriptor."""
    raw = io.BytesIO()
    with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz:
        tee = Hashing(gz)  # type: ignore[arg-type]
        write_layer_tar(storage_layer(diff_id), tee)  # type: ignore[arg-type]
    got = f"sha256:{tee.sha.hexdigest()}"
    if got != diff_id:
        raise SystemExit(f"rebuilt layer {diff_id} from containers-storage, got {got}")
    data = raw.getvalue()
    return data, {"mediaType": GZIP_LAYER, "digest": f"sha256:{hashlib.sha256(data).hexdigest()}", "size": len(data)}


def add_blob(tar: tarfile.TarFile, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    info = tarfile.TarInfo(f"blobs/sha256/{digest}")
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))
    return f"sha256:{digest}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("image")
    parser.add_argument("out", type=Path)
    parser.add_argument("--ref", required=True, help="the name the archive's image carries")
    parser.add_argument("--reuse", type=Path, action="append", default=[], help="full archives to reuse layers of")
    parser.add_argument("--min-reuse", type=float, default=0.9, help="share of the layer bytes that must be reused")
    args = parser.parse_args()
    start = time.monotonic()
    inspect = json.loads(
        subprocess.run(
            ["buildah", "inspect", "--type", "image", args.image], capture_output=True, text=True, check=True
        ).stdout
    )
    config_bytes = inspect["Config"].encode()
    config = json.loads(config_bytes)
    diff_ids: list[str] = config["rootfs"]["diff_ids"]
    sizes = {layer["digest"]: layer.get("size", 0) for layer in json.loads(inspect["Manifest"])["layers"]}
    base: Path | None = None
    known: dict[str, dict[str, Any]] = {}
    for archive in args.reuse:
        found = archive_layers(archive)
        if sum(sizes.get(d, 0) for d in diff_ids if d in found) > sum(sizes.get(d, 0) for d in diff_ids if d in known):
            base, known = archive, found
    reused = sum(sizes.get(d, 0) for d in diff_ids if d in known)
    total = sum(sizes.get(d, 0) for d in diff_ids) or 1
    if base is None or reused / total < args.min_reuse:
        print(f"thin export: only {reused / total:.0%} of {args.image}'s layers are in {args.reuse}", file=sys.stderr)
        return 3
    layers, new = [], 0
    partial = args.out.with_name(args.out.name + ".partial")
    with tarfile.open(partial, "w") as tar:
        for diff_id in diff_ids:
            if diff_id in known:
                layers.append(known[diff_id])
                continue
            data, descriptor = compressed_layer(diff_id)
            add_blob(tar, data)
            layers.append(descriptor)
            new += len(data)
        config_digest = add_blob(tar, config_bytes)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(config_bytes)},
            "layers": layers,
        }
        manifest_bytes = json.dumps(manifest, separators=(",", ":")).encode()
        manifest_digest = add_blob(tar, manifest_bytes)
        index = {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": MANIFEST,
                    "digest": manifest_digest,
                    "size": len(manifest_bytes),
                    "annotations": {"org.opencontainers.image.ref.name": args.ref, BASE_ANNOTATION: base.name},
                }
            ],
        }
        for name, data in (
            ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            ("index.json", json.dumps(index).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    partial.rename(args.out)
    print(
        f"thin export of {args.ref}: {len(diff_ids) - sum(d in known for d in diff_ids)} new layers, "
        f"{new >> 10} KiB written, {reused >> 20} MiB reused from {base.name}, {time.monotonic() - start:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
