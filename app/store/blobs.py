"""A content-addressed blob store: images live in files named by their SHA256.

A key is ``<sha256 hex>.<extension>``; rows in the database hold keys, never
bytes or absolute paths. Writes go to a temporary file that is flushed and
renamed into place, so a key that exists always names a complete blob, and
the precompute job writes blobs before the rows that point at them.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

EXTENSIONS = {"webp": "image/webp", "png": "image/png", "jpg": "image/jpeg"}
_KEY = re.compile(r"^[0-9a-f]{64}\.(" + "|".join(EXTENSIONS) + r")$")


def is_valid_key(key: str) -> bool:
    return bool(_KEY.match(key))


def media_type(key: str) -> str:
    return EXTENSIONS[key.rsplit(".", 1)[1]]


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        """Where blob ``key`` lives; raises ValueError for anything that is not a key."""
        if not is_valid_key(key):
            raise ValueError(f"not a blob key: {key!r}")
        return self.root / key[:2] / key[2:4] / key

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def put(self, data: bytes, extension: str) -> str:
        """Store ``data`` (idempotent) and return its key.

        The rename makes a blob appear whole or not at all, even when the
        process is killed; call `flush` before committing rows that point at
        new blobs so they also survive a crash of the machine.
        """
        key = f"{hashlib.sha256(data).hexdigest()}.{extension}"
        target = self.path(key)
        if target.is_file():
            return key
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False) as handle:
            handle.write(data)
        os.replace(handle.name, target)
        return key

    def flush(self) -> None:
        """Make every blob written so far durable (one sync instead of one per file)."""
        os.sync()

    def keys(self) -> set[str]:
        """Every complete blob (temporary files of interrupted writes are not keys)."""
        return {path.name for path in self.root.glob("*/*/*") if is_valid_key(path.name)}
