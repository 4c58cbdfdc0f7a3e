"""Keeping a store tidy: which blobs rows point at, and removing the ones nothing points at."""

from __future__ import annotations

from dataclasses import dataclass

from datetime import datetime, timedelta

from sqlalchemy import Connection, delete, select

from app.core.store.database import Store
from app.core.store.schema import (Artifact, DatasetExample, DatasetImage, Edge, Factorization, LayerArtifact, Probe,
                              ProbeAblation, ProbeAttribution, ProbeGroup, ProbeRender, ProbeUnit)

#: The tables of a probe's parts (rows with a ``probe_id``), and their columns that hold its blobs.
PROBE_PARTS = (ProbeUnit, ProbeGroup, ProbeRender, ProbeAttribution, ProbeAblation)
PROBE_BLOB_COLUMNS = (Probe.image_key, ProbeUnit.heatmap_key, ProbeGroup.heatmap_key, ProbeRender.image_key,
                      ProbeAttribution.heatmap_key)
#: Every column that holds a blob key.
BLOB_COLUMNS = (
    Artifact.blob_key, DatasetExample.crop_key, DatasetImage.thumbnail_key, Edge.kernel_key, Factorization.blob_key,
    LayerArtifact.blob_key, *PROBE_BLOB_COLUMNS,
)


def referenced_keys(connection: Connection, probes: bool = True) -> set[str]:
    """Every blob key a row points at (without users' probes' unless ``probes``)."""
    keys: set[str] = set()
    for column in BLOB_COLUMNS if probes else [c for c in BLOB_COLUMNS if c not in PROBE_BLOB_COLUMNS]:
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
    for attempt in store.retrying():  # a worker runs this beside stages
        with attempt, store.transaction() as session:
            old = select(Probe.id).where(Probe.created_at < cutoff)
            for part in PROBE_PARTS:
                session.execute(delete(part).where(part.probe_id.in_(old)))
            removed = session.execute(delete(Probe).where(Probe.created_at < cutoff)).rowcount
    return removed


def delete_probe(store: Store, public_id: str) -> bool:
    """Delete one probe (its owner asked): its rows, then its images that no other row points at."""
    for attempt in store.retrying():
        with attempt, store.transaction() as session:
            probe = session.scalar(select(Probe).where(Probe.public_id == public_id))
            if probe is None:
                return False
            keys = {probe.image_key}
            for column in PROBE_BLOB_COLUMNS[1:]:
                keys.update(session.scalars(select(column).where(column.class_.probe_id == probe.id)))
            for part in PROBE_PARTS:
                session.execute(delete(part).where(part.probe_id == probe.id))
            session.delete(probe)
    with store.engine.connect() as connection:
        still = {key for column in BLOB_COLUMNS for key in connection.scalars(select(column).where(column.in_(keys)))}
    for key in keys - still:
        store.blobs.remove(key)
    return True


def probe_blob(connection: Connection, key: str) -> bool:
    """Whether ``key`` is one of a probe's pictures (users' images: served only under the probe's own URL)."""
    return any(connection.scalar(select(column).where(column == key).limit(1)) is not None
               for column in PROBE_BLOB_COLUMNS)
