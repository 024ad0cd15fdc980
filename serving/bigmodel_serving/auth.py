"""Named API keys from a mounted Secret directory, re-read when it changes (rotation without restart).

Each regular file directly in the directory is one key: the file name is the key's name (it shows in
metrics and the request log), the stripped file content is the key. Hidden files (Kubernetes'
`..data` links and `..<timestamp>` directories) are skipped. A Secret volume updates by swapping its
`..data` symlink, so the directory is checked by the stat signature of its entries at most once per
`recheck_s` and re-read when it differs. Keys are kept only as SHA-256 digests and never logged. A
missing or empty directory accepts no key (fail closed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

MAX_KEY_BYTES = 4096
RECHECK_S = 1.0

_Signature = tuple[tuple[str, int, int, int], ...]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_keys(directory: Path) -> dict[str, str]:
    """{name: key} for the key files in `directory` (empty when it is missing or unreadable)."""
    keys: dict[str, str] = {}
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError:
        return keys
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if not entry.is_file():  # follows the Secret's symlinks
                continue
            raw = Path(entry.path).read_bytes()[: MAX_KEY_BYTES + 1]
        except OSError:
            continue
        if len(raw) > MAX_KEY_BYTES:
            logger.warning("API key file %s is larger than %d bytes; ignored", entry.name, MAX_KEY_BYTES)
            continue
        key = raw.decode("utf-8", errors="replace").strip()
        if key:
            keys[entry.name] = key
    return keys


class ApiKeyStore:
    """Maps a bearer key to its name; reloads the directory when its files change."""

    def __init__(self, directory: str | os.PathLike[str], *, recheck_s: float = RECHECK_S) -> None:
        self.directory = Path(directory)
        self.recheck_s = recheck_s
        self._names: dict[bytes, str] = {}
        self._signature: _Signature | None = None
        self._checked_at = float("-inf")
        self._lock = threading.Lock()
        self.reload_if_changed(force=True)

    def _stat_signature(self) -> _Signature:
        signature = []
        try:
            for entry in os.scandir(self.directory):
                if entry.name.startswith("."):
                    continue
                try:
                    stat = entry.stat()  # through the symlink
                except OSError:
                    continue
                signature.append((entry.name, stat.st_ino, stat.st_size, stat.st_mtime_ns))
        except OSError:
            pass
        return tuple(sorted(signature))

    def reload_if_changed(self, *, force: bool = False) -> bool:
        """Re-read the keys when the directory changed; True when they were reloaded."""
        now = time.monotonic()
        if not force and now - self._checked_at < self.recheck_s:
            return False
        self._checked_at = now
        signature = self._stat_signature()
        if signature == self._signature and not force:
            return False
        keys = read_keys(self.directory)
        names = {_digest(key): name for name, key in keys.items()}
        with self._lock:
            self._names = names
            self._signature = signature
        if not keys:
            logger.warning("no API keys in %s: every request to /v1/* is refused", self.directory)
        else:
            logger.info("loaded %d API key(s) from %s: %s", len(keys), self.directory, ", ".join(sorted(keys)))
        return True

    def key_count(self) -> int:
        return len(self._names)

    def name_of(self, key: str) -> str | None:
        """The name of `key` when it is one of the current keys, else None."""
        self.reload_if_changed()
        if not key:
            return None
        # A dict lookup by SHA-256 digest: its timing says nothing useful about the key.
        return self._names.get(_digest(key))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
