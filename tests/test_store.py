"""The store: catalog rows, schema checks, content-addressed blobs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from app.core.errors import StoreError
from app.core.settings import Settings
from app.core.store import SCHEMA_VERSION, Layer, Run, Store, Unit, is_valid_key
from app.core.store.blobs import FolderBlobs
from app.core.store.schema import Meta
from app.core.store.summary import coverage
from app.core.zoo import ModelSpec
from precompute.stages.catalog import catalog


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_catalog_writes_every_layer_and_unit_once(store: Store, spec: ModelSpec) -> None:
    first = catalog(store, spec)
    assert (first.layers_added, first.units_added) == (67, sum(layer.channels for layer in spec.layers))
    second = catalog(store, spec)
    assert (second.layers_added, second.units_added) == (0, 0)
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Unit)) == 13768
        chain = session.scalar(
            select(Unit).join(Layer).where(Layer.name == "softmax2", Unit.index == 488)
        )
        assert chain is not None and chain.label == "chain"
        assert session.scalar(select(func.count()).select_from(Run).where(Run.stage == "catalog")) == 2
        layers = coverage(session)[0].layers
    assert [layer.name for layer in layers][:3] == ["conv2d0", "conv2d1", "conv2d2"]
    assert layers[-1].name == "softmax2"


def test_catalog_refuses_a_store_that_disagrees_and_leaves_it(store: Store, spec: ModelSpec) -> None:
    catalog(store, spec)
    with store.transaction() as session:
        session.execute(update(Layer).where(Layer.name == "mixed4c").values(channels=508))
    with pytest.raises(StoreError, match="mixed4c .*508 channels"):
        catalog(store, spec)
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Run)) == 1


def test_a_store_from_a_newer_schema_is_refused_untouched(settings: Settings, spec: ModelSpec) -> None:
    with Store.open(settings, create=True) as store:
        catalog(store, spec)
        with store.transaction() as session:
            session.execute(update(Meta).values(value=str(SCHEMA_VERSION + 1)))
    database = settings.data_dir / "microscope.sqlite"
    before = _digest(database)
    for readonly in (False, True):
        with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
            Store.open(settings, readonly=readonly)
    assert _digest(database) == before


def test_only_catalog_creates_a_store(tmp_path: Path) -> None:
    for readonly in (True, False):
        with pytest.raises(StoreError, match="no store at"):
            Store.open(Settings.load(tmp_path / "absent"), readonly=readonly)
    assert not (tmp_path / "absent").exists()


def test_read_only_store_cannot_write(settings: Settings, spec: ModelSpec) -> None:
    with Store.open(settings, create=True) as store:
        catalog(store, spec)
    with Store.open(settings, readonly=True) as store, pytest.raises(Exception, match="readonly"):
        catalog(store, spec)


def test_blobs_are_content_addressed_and_keys_are_checked(tmp_path: Path) -> None:
    blobs = FolderBlobs(tmp_path / "blobs")
    key = blobs.put(b"pixels", "webp")
    assert key == hashlib.sha256(b"pixels").hexdigest() + ".webp"
    assert blobs.put(b"pixels", "webp") == key
    assert blobs.path(key).read_bytes() == b"pixels" and blobs.has(key)
    (blobs.path(key).parent / ".tmp-interrupted").write_bytes(b"half")
    assert blobs.keys() == {key}
    assert blobs.remove_partials() == 1 and blobs.keys() == {key} and blobs.remove_partials() == 0
    for bad in ("../secret.webp", key.upper(), key[:-5] + ".exe", "", key + "/x"):
        assert not is_valid_key(bad)
        with pytest.raises(ValueError):
            blobs.path(bad)


def test_settings_refuse_a_malformed_database_url(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="not a database URL"):
        Settings.load(tmp_path, "not a url")


def test_a_schema_2_store_is_upgraded_in_place_and_the_catalog_fills_the_offsets(settings: Settings,
                                                                                  spec: ModelSpec) -> None:
    from sqlalchemy import text

    with Store.open(settings, create=True) as store:
        catalog(store, spec)
        with store.transaction() as session:  # as a store written before layers kept their offsets
            session.execute(text("ALTER TABLE layers DROP COLUMN field_offset"))
            session.execute(update(Meta).where(Meta.key == "schema_version").values(value="2"))
    with pytest.raises(StoreError, match="older than this microscope's"):
        Store.open(settings, readonly=True)
    with Store.open(settings) as store:  # writable: the column is added, empty
        with store.session() as session:
            assert session.scalar(select(Layer.offset).where(Layer.name == "mixed3a")) is None
            assert session.get(Meta, "schema_version").value == str(SCHEMA_VERSION)
        catalog(store, spec)
        with store.session() as session:
            assert session.scalar(select(Layer.offset).where(Layer.name == "mixed3a")) == spec.layer("mixed3a").offset


def test_a_schema_3_store_of_the_bvlc_network_calls_it_inceptionv1_caffe(settings: Settings, spec: ModelSpec) -> None:
    """Before schema 4 the BVLC GoogLeNet was ``inceptionv1``: that name is now Microscope's own network."""
    from app.core.store.schema import Model

    with Store.open(settings, create=True) as store:
        catalog(store, spec)
        with store.transaction() as session:
            session.execute(update(Model).values(name="inceptionv1"))
            session.execute(update(Meta).where(Meta.key == "schema_version").values(value="3"))
            units = session.scalar(select(func.count()).select_from(Unit))
    with Store.open(settings) as store, store.session() as session:
        assert session.scalars(select(Model.name)).all() == ["inceptionv1_caffe"]
        assert session.scalar(select(func.count()).select_from(Unit)) == units
        assert session.get(Meta, "schema_version").value == str(SCHEMA_VERSION)


def test_a_schema_4_stores_probes_get_random_public_ids(settings: Settings, spec: ModelSpec) -> None:
    """Before schema 5 a probe's URL was its image's digest: the upgrade draws each one a random id."""
    from datetime import datetime

    from sqlalchemy import text

    from app.core.store.schema import Model, Probe

    with Store.open(settings, create=True) as store:
        catalog(store, spec)
        with store.transaction() as session:
            model_id = session.scalar(select(Model.id))
            for sha in ("a" * 64, "b" * 64):
                session.add(Probe(model_id=model_id, sha256=sha, image_key="k", width=1, height=1, classes=[], recipe={},
                                  created_at=datetime(2026, 1, 1)))
        with store.transaction() as session:  # as a store written before probes had ids
            session.execute(text("DROP INDEX ix_probes_public_id"))
            session.execute(text("ALTER TABLE probes DROP COLUMN public_id"))
            session.execute(update(Meta).where(Meta.key == "schema_version").values(value="4"))
    with Store.open(settings) as store, store.session() as session:
        ids = session.scalars(select(Probe.public_id)).all()
        assert len(ids) == len(set(ids)) == 2 and all(len(i) == 22 and i not in ("a" * 64, "b" * 64) for i in ids)
        indexes = {row[1] for row in session.execute(text("PRAGMA index_list(probes)"))}
        assert {"ix_probes_public_id", "ix_probes_image_key"} <= indexes


def test_a_writer_transaction_runs_on_a_connection_with_the_stores_settings(settings: Settings) -> None:
    """The very connection a transaction uses: foreign keys on, a 30 s busy timeout, write-ahead logging."""
    with Store.open(settings, create=True) as store:
        for _ in range(3):  # the pooled connection, reused
            with store.transaction() as session:
                connection = session.connection()
                assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
                assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
                assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        with pytest.raises(Exception, match="FOREIGN KEY"), store.transaction() as session:
            session.add(Unit(layer_id=999_999, index=0))
            session.flush()


def test_gc_leaves_young_blobs_and_temporary_files_and_refuses_beside_a_live_worker(settings: Settings) -> None:
    """A blob written but not yet committed, or a write in progress, is younger than the grace period."""
    import os
    import time

    from app.core.jobs import JobQueue
    from app.core.store.maintenance import collect_garbage
    from tests.support.cli import microscope

    with Store.open(settings, create=True) as store:
        young = store.blobs.put(b"a worker's render, rows not committed yet", "webp")
        store.blobs.flush()
        partial = store.blobs.path(young).parent / ".tmp-writing"
        partial.write_bytes(b"half")
        assert oct(store.blobs.path(young).stat().st_mode & 0o777) == "0o644"
        collected = collect_garbage(store, grace_seconds=60)
        assert collected.blobs_removed == 0 and collected.partial_files_removed == 0
        assert store.blobs.has(young) and partial.exists()
        old = time.time() - 120
        for path in (store.blobs.path(young), partial):
            os.utime(path, (old, old))
        collected = collect_garbage(store, grace_seconds=60)
        assert collected.blobs_removed == 1 and collected.partial_files_removed == 1 and not partial.exists()
    queue = JobQueue.for_store(settings)
    queue.beat("filler", "filling")
    refused = microscope("gc", "--data", str(settings.data_dir))
    assert refused.returncode == 2 and "worker(s) are running" in refused.stderr
    queue.leave("filler")
    assert microscope("gc", "--data", str(settings.data_dir)).returncode == 0


def test_a_transaction_that_meets_a_lock_runs_again_a_bounded_number_of_times(settings: Settings) -> None:
    """SQLite's "database is locked" (a busy timeout passed, or a write after another writer's commit, which no
    timeout waits for) runs the transaction again; other errors and a lock past the attempts are raised."""
    from sqlalchemy.exc import OperationalError

    from app.core.store.database import WRITE_ATTEMPTS

    locked = OperationalError("INSERT ...", {}, Exception("database is locked"))
    with Store.open(settings, create=True) as store:
        runs = []
        for attempt in store.retrying():
            with attempt, store.transaction() as session:
                runs.append(1)
                session.add(Meta(key=f"try{len(runs)}", value="x"))
                if len(runs) < 3:
                    raise locked
        with store.session() as session:  # only the run that got through committed
            assert [m.key for m in session.scalars(select(Meta).where(Meta.key.like("try%")))] == ["try3"]
        runs.clear()
        with pytest.raises(OperationalError, match="database is locked"):
            for attempt in store.retrying():
                with attempt:
                    runs.append(1)
                    raise locked
        assert len(runs) == WRITE_ATTEMPTS
        with pytest.raises(ValueError):
            for attempt in store.retrying():
                with attempt:
                    runs.append(1)
                    raise ValueError("not a lock")
        assert len(runs) == WRITE_ATTEMPTS + 1
