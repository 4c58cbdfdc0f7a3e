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
    """Where a store lives: a data directory (blobs, SQLite file) and the database URL."""

    data_dir: Path
    database_url: str

    @classmethod
    def load(cls, data_dir: Path | None = None, database_url: str | None = None) -> Settings:
        """Flags first, then ``MICROSCOPE_DATA`` / ``MICROSCOPE_DATABASE_URL``, then the defaults."""
        data_dir = data_dir or Path(os.environ.get("MICROSCOPE_DATA") or DEFAULT_DATA_DIR)
        database_url = database_url or os.environ.get("MICROSCOPE_DATABASE_URL") or ""
        if not database_url:
            database_url = f"sqlite:///{(data_dir / DATABASE_FILE).resolve()}"
        try:
            make_url(database_url)
        except ArgumentError as error:
            raise StoreError(f"MICROSCOPE_DATABASE_URL is not a database URL: {database_url!r}") from error
        return cls(data_dir=data_dir.resolve(), database_url=database_url)

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"
