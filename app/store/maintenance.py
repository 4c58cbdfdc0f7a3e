"""Keeping a store tidy: which blobs rows point at, and removing the ones nothing points at."""

from __future__ import annotations

from dataclasses import dataclass

from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, select

from app.store.database import Store
from app.store.schema import Artifact, DatasetExample, DatasetImage, Edge, Probe, ProbeUnit

#: Every column that holds a blob key.
BLOB_COLUMNS = (
    Artifact.blob_key, DatasetExample.crop_key, DatasetImage.thumbnail_key, Edge.kernel_key,
    Probe.image_key, ProbeUnit.heatmap_key,
)


def referenced_keys(connection: Connection) -> set[str]:
    keys: set[str] = set()
    for column in BLOB_COLUMNS:
        keys.update(key for (key,) in connection.execute(select(column).distinct()) if key)
    return keys


@dataclass(frozen=True)
class Collected:
    blobs_removed: int
    partial_files_removed: int
    missing: int


#: Blobs and temporary files younger than this are never removed: a stage or a worker writes its
#: blobs just before the rows that point at them, and a temporary file may be a write in progress.
GRACE_SECONDS = 3600.0


def collect_garbage(store: Store, grace_seconds: float = GRACE_SECONDS) -> Collected:
    """Remove blobs no row points at and half-written temporary files (left by interrupted stages),
    leaving alone any written in the last ``grace_seconds`` (they may belong to a run in progress)."""
    aged = store.blobs.keys(older_than=grace_seconds)  # listed before the rows are read: a blob
    with store.engine.connect() as connection:        # committed meanwhile is in the rows
        referenced = referenced_keys(connection)
    partial = store.blobs.remove_partials(older_than=grace_seconds)
    for key in aged - referenced:
        store.blobs.remove(key)
    missing = referenced - store.blobs.keys()
    return Collected(len(aged - referenced), partial, len(missing))


def remove_probes(store: Store, older_than_days: float, now: datetime) -> int:
    """Delete the probes made more than ``older_than_days`` ago (their blobs go with the next gc)."""
    cutoff = now - timedelta(days=older_than_days)
    with store.transaction() as session:
        old = select(Probe.id).where(Probe.created_at < cutoff)
        session.execute(delete(ProbeUnit).where(ProbeUnit.probe_id.in_(old)))
        return session.execute(delete(Probe).where(Probe.created_at < cutoff)).rowcount
