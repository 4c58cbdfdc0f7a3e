"""Settings, read once from the environment or command-line flags, checked up front."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.errors import StoreError

DEFAULT_DATA_DIR = Path("microscope-data")
DATABASE_FILE = "microscope.sqlite"


@dataclass(frozen=True)
class Settings:
    """Where a store lives: a data directory (blobs, SQLite file), the database URL, the blobs' URL."""

    data_dir: Path
    database_url: str
    #: ``s3://bucket/prefix`` where blobs live in object storage; None: the folder ``data_dir/blobs``.
    blobs_url: str | None = None
    #: Serve object-storage blobs as redirects to presigned URLs (``MICROSCOPE_BLOBS_REDIRECT=1``)
    #: instead of passing their bytes through the server.
    blobs_redirect: bool = False

    @classmethod
    def load(cls, data_dir: Path | None = None, database_url: str | None = None, blobs_url: str | None = None) -> Settings:
        """Flags first, then ``MICROSCOPE_DATA`` / ``MICROSCOPE_DATABASE_URL`` / ``MICROSCOPE_BLOBS``, then the defaults."""
        data_dir = data_dir or Path(os.environ.get("MICROSCOPE_DATA") or DEFAULT_DATA_DIR)
        database_url = database_url or os.environ.get("MICROSCOPE_DATABASE_URL") or ""
        if not database_url:
            database_url = f"sqlite:///{(data_dir / DATABASE_FILE).resolve()}"
        try:
            make_url(database_url)
        except ArgumentError as error:
            raise StoreError(f"MICROSCOPE_DATABASE_URL is not a database URL: {database_url!r}") from error
        blobs_url = blobs_url or os.environ.get("MICROSCOPE_BLOBS") or None
        if blobs_url is not None and not blobs_url.startswith("s3://"):
            raise StoreError(f"MICROSCOPE_BLOBS is not an s3://bucket/prefix URL: {blobs_url!r}")
        redirect = os.environ.get("MICROSCOPE_BLOBS_REDIRECT", "0")
        if redirect not in ("0", "1"):
            raise StoreError(f"MICROSCOPE_BLOBS_REDIRECT is 0 or 1, not {redirect!r}")
        return cls(data_dir=data_dir.resolve(), database_url=database_url, blobs_url=blobs_url,
                   blobs_redirect=redirect == "1")

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"
