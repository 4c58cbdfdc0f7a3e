"""A scratch copy of a store for a bench: its database copied (SQLite's backup), its blobs shared by a link.

A bench that recomputes a stage on the main job's store runs on the copy, so the store itself is left as it
was; what the stage writes to the blob folder is content-addressed (an unreferenced blob goes with `microscope gc`).
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def scratch_copy(data: Path) -> Iterator[Path]:
    """A temporary data folder holding a copy of ``data``'s database and a link to its blobs."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch)
        source = sqlite3.connect(data / "microscope.sqlite")
        target = sqlite3.connect(copy / "microscope.sqlite")
        source.backup(target)
        source.close(), target.close()
        (copy / "blobs").symlink_to((data / "blobs").resolve())
        yield copy
