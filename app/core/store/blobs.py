"""Content-addressed blob stores: images named by their SHA256, in a folder or in object storage.

A key is ``<sha256 hex>.<extension>``; rows in the database hold keys, never
bytes or absolute paths. A blob is written whole or not at all (a folder
renames a finished temporary file into place; an object store's PUT is
atomic), and the precompute job writes blobs, then calls `flush`, before it
commits the rows that point at them.

Two places hold blobs, chosen by `open_blobs`:

- `FolderBlobs`: ``<data>/blobs/ab/cd/<key>`` (the default; one host, or a
  shared file system);
- `ObjectBlobs`: an S3-compatible bucket (``MICROSCOPE_BLOBS=s3://bucket/prefix``),
  which several hosts can share. Through obstore (the Rust ``object_store``
  crate's Python binding): one small dependency with no boto stack, async
  uploads so a stage's many small images go up concurrently, presigned URLs,
  and credentials and endpoint from the standard ``AWS_*`` environment.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from app.core.errors import StoreError

#: ``npz``: a factorization's arrays (`app.core.store.Factorization`), served for download as they are.
EXTENSIONS = {"webp": "image/webp", "png": "image/png", "jpg": "image/jpeg", "npz": "application/octet-stream"}
_KEY = re.compile(r"^[0-9a-f]{64}\.(" + "|".join(EXTENSIONS) + r")$")


def is_valid_key(key: str) -> bool:
    return bool(_KEY.match(key))


def media_type(key: str) -> str:
    return EXTENSIONS[key.rsplit(".", 1)[1]]


def key_of(data: bytes, extension: str) -> str:
    return f"{hashlib.sha256(data).hexdigest()}.{extension}"


def relative_path(key: str) -> str:
    """``ab/cd/<key>``; raises ValueError for anything that is not a key."""
    if not is_valid_key(key):
        raise ValueError(f"not a blob key: {key!r}")
    return f"{key[:2]}/{key[2:4]}/{key}"


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return float("inf")  # gone meanwhile: never old enough to remove


def _fsync(path: Path, flags: int) -> None:
    try:
        descriptor = os.open(path, flags)
    except FileNotFoundError:
        return
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class FolderBlobs:
    """Blobs as files under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        #: Files written since the last `flush` (made durable there, with their folders).
        self._unsynced: list[Path] = []

    @property
    def location(self) -> str:
        return str(self.root)

    def path(self, key: str) -> Path:
        """Where blob ``key`` lives; raises ValueError for anything that is not a key."""
        return self.root / relative_path(key)

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    def has(self, key: str) -> bool:
        return self.path(key).is_file()

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def put(self, data: bytes, extension: str) -> str:
        """Store ``data`` (idempotent) and return its key.

        The rename makes a blob appear whole or not at all, even when the
        process is killed; call `flush` before committing rows that point at
        new blobs so they also survive a crash of the machine.
        """
        key = key_of(data, extension)
        target = self.path(key)
        if target.is_file():
            return key
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, prefix=".tmp-", delete=False) as handle:
            handle.write(data)
        os.chmod(handle.name, 0o644)  # served by whatever user runs the server, like any static file
        os.replace(handle.name, target)
        self._unsynced.append(target)
        return key

    def flush(self) -> None:
        """Make every blob written since the last flush durable: each file, then each folder's entry.

        Only this store's files are synced (never the whole host, as ``os.sync`` would).
        """
        written, self._unsynced = self._unsynced, []
        for path in written:
            _fsync(path, os.O_RDONLY)
        for folder in {path.parent for path in written}:
            _fsync(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))

    def keys(self, older_than: float | None = None) -> set[str]:
        """Every complete blob (temporary files of interrupted writes are not keys); with ``older_than``,
        only those last written more than that many seconds ago."""
        cutoff = time.time() - older_than if older_than is not None else None
        return {path.name for path in self.root.glob("*/*/*") if is_valid_key(path.name)
                and (cutoff is None or _mtime(path) < cutoff)}

    def remove(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def remove_partials(self, older_than: float = 0.0) -> int:
        """Delete the temporary files of interrupted writes older than ``older_than`` seconds (a younger one
        may be a write in progress); how many there were."""
        cutoff = time.time() - older_than
        partial = [path for path in self.root.glob("*/*/.tmp-*") if _mtime(path) < cutoff] if self.root.is_dir() else []
        for path in partial:
            path.unlink(missing_ok=True)
        return len(partial)

    def signed_url(self, key: str, seconds: int) -> str | None:  # noqa: ARG002 - a folder has no URL of its own
        return None


class ObjectBlobs:
    """Blobs as objects ``<prefix>/ab/cd/<key>`` in an S3-compatible bucket.

    `put` keeps new blobs in memory and `flush` uploads them concurrently
    (also whenever ``PENDING_BYTES`` are waiting): a key that `put` returned
    exists in the bucket once `flush` has returned, which is the contract the
    stages rely on before they commit rows.
    """

    PENDING_BYTES = 64 << 20
    CONCURRENCY = 8

    def __init__(self, url: str) -> None:
        from obstore.store import from_url

        self.url = url.rstrip("/")
        try:
            self.store = from_url(self.url)
        except Exception as error:  # noqa: BLE001 - obstore raises its own configuration errors
            raise StoreError(f"cannot open blob storage {url}: {error}") from None
        self._pending: dict[str, bytes] = {}
        self._pending_bytes = 0

    @property
    def location(self) -> str:
        return self.url

    def local_path(self, key: str) -> Path | None:  # noqa: ARG002 - objects have no local path
        return None

    def has(self, key: str) -> bool:
        import obstore

        if key in self._pending:
            return True
        try:
            obstore.head(self.store, relative_path(key))
        except FileNotFoundError:
            return False
        return True

    def get(self, key: str) -> bytes:
        import obstore

        if key in self._pending:
            return self._pending[key]
        return bytes(obstore.get(self.store, relative_path(key)).bytes())

    def put(self, data: bytes, extension: str) -> str:
        key = key_of(data, extension)
        if key not in self._pending:
            self._pending[key] = data
            self._pending_bytes += len(data)
            if self._pending_bytes >= self.PENDING_BYTES:
                self.flush()
        return key

    def flush(self) -> None:
        """Upload every blob put since the last flush (objects are durable when their PUT returns)."""
        if not self._pending:
            return
        pending, self._pending, self._pending_bytes = self._pending, {}, 0
        asyncio.run(self._upload(pending))

    async def _upload(self, pending: dict[str, bytes]) -> None:
        import obstore

        limit = asyncio.Semaphore(self.CONCURRENCY)

        async def one(key: str, data: bytes) -> None:
            async with limit:
                await obstore.put_async(self.store, relative_path(key), data)

        await asyncio.gather(*(one(key, data) for key, data in pending.items()))

    def keys(self, older_than: float | None = None) -> set[str]:
        import obstore

        cutoff = datetime.now(UTC) - timedelta(seconds=older_than) if older_than is not None else None
        found = set()
        for batch in obstore.list(self.store, chunk_size=1000):
            found.update(name for meta in batch if is_valid_key(name := meta["path"].rsplit("/", 1)[-1])
                         and (cutoff is None or meta["last_modified"] < cutoff))
        return found if cutoff is not None else found | set(self._pending)

    def remove(self, key: str) -> None:
        import obstore

        self._pending.pop(key, None)
        try:
            obstore.delete(self.store, relative_path(key))
        except FileNotFoundError:
            pass

    def remove_partials(self, older_than: float = 0.0) -> int:  # noqa: ARG002 - nothing to age
        return 0  # an object appears whole when its PUT completes; nothing is left half-written

    def signed_url(self, key: str, seconds: int) -> str | None:
        import obstore

        return obstore.sign(self.store, "GET", relative_path(key), timedelta(seconds=seconds))


BlobStore = FolderBlobs | ObjectBlobs


def open_blobs(url: str | None, folder: Path) -> BlobStore:
    """Object storage where ``url`` names it (``s3://bucket/prefix``), else the folder."""
    if not url:
        return FolderBlobs(folder)
    if not url.startswith("s3://"):
        raise StoreError(f"MICROSCOPE_BLOBS {url!r} is not an s3://bucket/prefix URL (leave it unset for the folder)")
    return ObjectBlobs(url)
