"""An s3:// output: a local staging folder mirrored to the bucket (see storage.py for the order)."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from bigmodel_training import storage

log = logging.getLogger(__name__)
CHECKPOINTS = "checkpoints"
COMPLETE = "COMPLETE"  # bigmodel_training.checkpoint.COMPLETE, without importing torch here
FINGERPRINT = "run-fingerprint.json"
METRICS = "metrics.json"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


class RemoteOutput:
    """Keeps `uri` in step with the local staging folder `local_dir`."""

    def __init__(self, uri: str, local_dir: Path) -> None:
        storage.split_uri(uri)  # refuse a bad URI before any work
        self.uri = uri.rstrip("/")
        self.local_dir = local_dir
        self.uploaded: set[str] = set()  # checkpoint folder names present in the bucket

    def restore(self) -> None:
        """Bring down what a previous attempt left: the fingerprint, metrics and newest checkpoint."""
        remote = storage.list_objects(self.uri)
        names = {rel for rel, _ in remote}
        for name in (FINGERPRINT, METRICS):
            if name in names:
                storage.download_file(f"{self.uri}/{name}", self.local_dir / name)
        complete = sorted(
            rel.split("/")[1] for rel in names
            if rel.startswith(f"{CHECKPOINTS}/") and rel.endswith(f"/{COMPLETE}") and rel.count("/") == 2
            and _STEP_DIR.match(rel.split("/")[1])
        )  # fmt: skip
        self.uploaded = {
            rel.split("/")[1] for rel in names if rel.startswith(f"{CHECKPOINTS}/") and rel.count("/") >= 2
        }
        if complete:
            newest = complete[-1]
            storage.download_prefix(f"{self.uri}/{CHECKPOINTS}/{newest}", self.local_dir / CHECKPOINTS / newest)
            log.info("restored checkpoint %s from %s", newest, self.uri)

    def _local_complete(self) -> list[str]:
        root = self.local_dir / CHECKPOINTS
        if not root.is_dir():
            return []
        return sorted(p.name for p in root.iterdir() if _STEP_DIR.match(p.name) and (p / COMPLETE).is_file())

    def sync_checkpoints(self) -> None:
        """Upload complete checkpoints the bucket lacks (marker last); delete the ones pruned locally."""
        local = self._local_complete()
        new = [name for name in local if name not in self.uploaded]
        if new and (self.local_dir / FINGERPRINT).is_file():
            storage.upload_file(self.local_dir / FINGERPRINT, f"{self.uri}/{FINGERPRINT}")
        for name in new:
            storage.upload_tree(
                self.local_dir / CHECKPOINTS / name, f"{self.uri}/{CHECKPOINTS}/{name}", last=[COMPLETE]
            )
            self.uploaded.add(name)
            log.info("uploaded checkpoint %s to %s", name, self.uri)
        for name in sorted(self.uploaded - set(local)):
            if not new:  # prune only after a newer checkpoint is safely up
                break
            storage.delete_prefix(f"{self.uri}/{CHECKPOINTS}/{name}")
            self.uploaded.discard(name)

    def finish(self) -> None:
        """Upload the result: checkpoints first, then the adapter files, metrics.json last."""
        self.sync_checkpoints()
        count = storage.upload_tree(self.local_dir, self.uri, skip={CHECKPOINTS}, last=[METRICS])
        log.info("uploaded %d files to %s", count, self.uri)
