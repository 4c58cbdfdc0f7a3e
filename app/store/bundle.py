"""Bundles: a whole store (database and blobs) as one tar archive, to compute on one machine and serve on another.

A bundle holds ``manifest.json``, the rows as an SQLite database
(``store.sqlite``, whatever database the store used) and every blob that a
row points at (``blobs/...``). Import checks the schema version and every
blob's content against its key, and writes only into an empty store.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, create_engine, func, insert, select, text

from app.errors import StoreError, StoreMissing
from app.settings import Settings
from app.store.database import Store
from app.store.maintenance import referenced_keys
from app.store.schema import SCHEMA_VERSION, Base, Meta, Model

FORMAT = "neuron-microscope-bundle"
CHUNK = 20_000


@dataclass(frozen=True)
class BundleSummary:
    path: Path
    rows: dict[str, int]
    blobs: int


def _copy_rows(source: Engine, target: Engine) -> dict[str, int]:
    """Copy every table, ids included, in dependency order, in one target transaction."""
    counts = {}
    with source.connect() as reader, target.begin() as writer:
        for table in Base.metadata.sorted_tables:
            if table.name == Meta.__tablename__:
                continue
            rows = reader.execute(select(table).order_by(*table.primary_key.columns)).mappings()
            counts[table.name] = 0
            while batch := rows.fetchmany(CHUNK):
                writer.execute(insert(table), [dict(row) for row in batch])
                counts[table.name] += len(batch)
        if target.dialect.name == "postgresql":  # explicit ids leave the sequences behind
            for table in Base.metadata.sorted_tables:
                if "id" in table.columns and counts.get(table.name):
                    writer.execute(text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), (SELECT max(id) FROM {table.name}))"
                    ))
    return counts


def export_bundle(store: Store, path: Path) -> BundleSummary:
    """Write ``store`` to ``path`` (a tar archive), atomically."""
    with tempfile.TemporaryDirectory() as work:
        database = Path(work) / "store.sqlite"
        target = create_engine(f"sqlite:///{database}")
        Base.metadata.create_all(target)
        with target.begin() as connection:
            connection.execute(insert(Meta), [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])
        rows = _copy_rows(store.engine, target)
        target.dispose()
        with store.engine.connect() as connection:
            keys = sorted(referenced_keys(connection))
        missing = sorted(set(keys) - store.blobs.keys())
        if missing:
            raise StoreError(f"the store lacks {len(missing)} blobs its rows point at (e.g. {missing[0]})")
        manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "rows": rows, "blobs": len(keys),
                    "created_at": datetime.now(UTC).isoformat()}
        (Path(work) / "manifest.json").write_text(json.dumps(manifest, indent=2))
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", suffix=".tar", delete=False) as partial:
            with tarfile.open(fileobj=partial, mode="w") as archive:
                archive.add(Path(work) / "manifest.json", "manifest.json")
                archive.add(database, "store.sqlite")
                for key in keys:
                    data = store.blobs.get(key)
                    member = tarfile.TarInfo(f"blobs/{key}")
                    member.size, member.mode, member.mtime = len(data), 0o644, int(time.time())
                    archive.addfile(member, io.BytesIO(data))
        os.chmod(partial.name, 0o644)
        os.replace(partial.name, path)
    return BundleSummary(path, rows, len(keys))


def _refuse_a_full_store(settings: Settings) -> None:
    try:
        with Store.open(settings, readonly=True) as store, store.engine.connect() as connection:
            if connection.execute(select(func.count()).select_from(Model)).scalar_one():
                raise StoreError(f"{settings.database_url} already holds a store; import into an empty one")
    except StoreMissing:
        return


def import_bundle(path: Path, settings: Settings) -> BundleSummary:
    """Read a bundle into the empty (or new) store of ``settings``; a bad bundle writes nothing."""
    if not path.is_file():
        raise StoreError(f"no bundle at {path}")
    try:
        archive = tarfile.open(path, mode="r")
    except tarfile.TarError as error:
        raise StoreError(f"{path} is not a bundle: {error}") from None
    with archive, tempfile.TemporaryDirectory() as work:
        try:
            manifest = json.loads(archive.extractfile("manifest.json").read())  # type: ignore[union-attr]
        except (KeyError, AttributeError, json.JSONDecodeError):
            raise StoreError(f"{path} is not a bundle: no readable manifest.json") from None
        if manifest.get("format") != FORMAT:
            raise StoreError(f"{path} is not a {FORMAT}")
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{path} has schema version {manifest.get('schema_version')}, this microscope reads {SCHEMA_VERSION}")
        _refuse_a_full_store(settings)
        blobs = [member for member in archive.getmembers() if member.name.startswith("blobs/")]
        for member in blobs:  # check every blob before writing anything
            key = member.name.removeprefix("blobs/")
            data = archive.extractfile(member)
            if data is None or "/" in key or hashlib.sha256(data.read()).hexdigest() != key.split(".")[0]:
                raise StoreError(f"{path}: blob {key} does not match its key; the bundle is corrupt")
        archive.extract("store.sqlite", work, filter="data")
        source = create_engine(f"sqlite:///{Path(work) / 'store.sqlite'}")
        with Store.open(settings, create=True) as store:
            for member in blobs:
                key = member.name.removeprefix("blobs/")
                store.blobs.put(archive.extractfile(member).read(), key.rsplit(".", 1)[1])  # type: ignore[union-attr]
            store.blobs.flush()
            rows = _copy_rows(source, store.engine)
        source.dispose()
    return BundleSummary(path, rows, len(blobs))
