"""API keys from a mounted Secret file, re-read whenever the file changes (rotation without restart).

The file holds one key per line; blank lines and lines starting with '#' are ignored. A Kubernetes
Secret volume updates by swapping the `..data` symlink, so the file is stat()ed through the symlink
on each check and re-read when its inode, size or mtime differ. Keys are kept only as SHA-256
digests and never logged. A missing or unreadable file accepts no key at all (fail closed).
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

_Signature = tuple[int, int, int, int] | None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def parse_keys(text: str) -> set[str]:
    """The keys in a keys file's text: stripped non-empty lines that do not start with '#'."""
    keys = set()
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            keys.add(stripped)
    return keys


class ApiKeyStore:
    """Checks bearer keys against the keys file, reloading it when it changes on disk."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._digests: frozenset[bytes] = frozenset()
        self._signature: _Signature = None
        self._loaded_once = False
        self._lock = threading.Lock()
        self.reload_if_changed()

    def _stat_signature(self) -> _Signature:
        try:
            stat = os.stat(self.path)  # follows the ..data symlink of Secret volumes
        except OSError:
            return None
        return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)

    def reload_if_changed(self) -> bool:
        """Re-read the file if its stat signature changed; True when the keys were reloaded."""
        signature = self._stat_signature()
        if signature == self._signature and self._loaded_once:
            return False
        with self._lock:
            try:
                keys = parse_keys(self.path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError) as error:
                keys = set()
                logger.warning(
                    "API keys file %s unreadable (%s); every key is refused", self.path, type(error).__name__
                )
            self._digests = frozenset(_digest(key) for key in keys)
            self._signature = signature
            self._loaded_once = True
        logger.info("loaded %d API key(s) from %s", len(keys), self.path)
        return True

    def key_count(self) -> int:
        return len(self._digests)

    def is_valid(self, key: str) -> bool:
        """True when `key` is one of the file's current keys."""
        self.reload_if_changed()
        return bool(key) and _digest(key) in self._digests


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()
