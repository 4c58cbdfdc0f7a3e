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


def collect_garbage(store: Store) -> Collected:
    """Remove blobs no row points at and half-written temporary files (left by interrupted stages).

    Run it when no precompute stage is writing to the store: a stage writes
    its blobs just before the rows that point at them.
    """
    with store.engine.connect() as connection:
        referenced = referenced_keys(connection)
    partial = store.blobs.remove_partials()
    stored = store.blobs.keys()
    for key in stored - referenced:
        store.blobs.remove(key)
    return Collected(len(stored - referenced), partial, len(referenced - stored))


def remove_probes(store: Store, older_than_days: float, now: datetime) -> int:
    """Delete the probes made more than ``older_than_days`` ago (their blobs go with the next gc)."""
    cutoff = now - timedelta(days=older_than_days)
    with store.transaction() as session:
        old = select(Probe.id).where(Probe.created_at < cutoff)
        session.execute(delete(ProbeUnit).where(ProbeUnit.probe_id.in_(old)))
        return session.execute(delete(Probe).where(Probe.created_at < cutoff)).rowcount
