"""Bundles: export a store as one archive, import it elsewhere, refuse what would harm a store."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import pytest
from sqlalchemy import select

from app.core.errors import StoreError
from app.core.settings import Settings
from app.core.store import Run, Store
from app.core.store.bundle import import_bundle
from app.core.zoo import ModelSpec
from precompute.running.runs import start_run
from tests.support.contents import contents
from tests.support.cli import microscope
from tests.support.web_store import build


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, spec: ModelSpec, net, images_dir: Path) -> Settings:  # noqa: ANN001
    return build(tmp_path_factory.mktemp("bundle"), spec, net, images_dir, circuits="mixed3a_3x3,softmax2")


@pytest.fixture(scope="module")
def bundle(source: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Exported once by the command a user runs; the tests below only read it."""
    path = tmp_path_factory.mktemp("bundles") / "store.tar"
    result = microscope("export", str(path), "--data", str(source.data_dir))
    assert result.returncode == 0, result.stderr
    return path


def test_round_trip_keeps_every_row_and_blob(source: Settings, bundle: Path, tmp_path: Path) -> None:
    imported = microscope("import", str(bundle), "--data", str(tmp_path / "copy"))
    assert imported.returncode == 0, imported.stderr
    before, after = contents(source), contents(Settings.load(tmp_path / "copy"))
    assert after == {**before, "blobs": before["referenced"]}  # orphans are not exported
    assert len(after["edges"]) > 1000 and len(after["examples"]) > 1000 and after["artifacts"]


def test_import_into_postgres(source: Settings, bundle: Path, postgres_url: str, tmp_path: Path) -> None:
    target = Settings.load(tmp_path / "pg", postgres_url)
    import_bundle(bundle, target)
    assert contents(target)["edges"] == contents(source)["edges"]
    with Store.open(target) as store, store.transaction() as session:  # sequences follow the imported ids
        assert start_run(session, "check", 1, {}).id > max(run.id for run in session.scalars(select(Run)).all()[:-1])


def test_import_refuses_a_store_that_has_data(bundle: Path, tmp_path: Path) -> None:
    target = Settings.load(tmp_path / "target")
    import_bundle(bundle, target)
    database = target.data_dir / "microscope.sqlite"
    digest = hashlib.sha256(database.read_bytes()).hexdigest()
    with pytest.raises(StoreError, match="already holds a store"):
        import_bundle(bundle, target)
    assert hashlib.sha256(database.read_bytes()).hexdigest() == digest


def test_a_tampered_bundle_writes_nothing(bundle: Path, tmp_path: Path) -> None:
    tampered = tmp_path / "tampered.tar"
    with tarfile.open(bundle) as original, tarfile.open(tampered, "w") as copy:
        for member in original.getmembers():
            data = original.extractfile(member)
            if member.name.startswith("blobs/") and member.name.endswith(".png"):
                payload = data.read()[:-1] + b"\0"
                member.size = len(payload)
                copy.addfile(member, io.BytesIO(payload))
            else:
                copy.addfile(member, data)
    with pytest.raises(StoreError, match="does not match its key"):
        import_bundle(tampered, Settings.load(tmp_path / "never"))
    assert not (tmp_path / "never").exists()
    result = microscope("import", str(tmp_path / "missing.tar"), "--data", str(tmp_path / "never"))
    assert result.returncode == 2 and "no bundle at" in result.stderr
