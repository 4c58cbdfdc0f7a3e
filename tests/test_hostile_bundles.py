"""Archives `microscope import` did not make: each refused with one line, the target store as it was.

The hostile producer here knows the format: it rewrites a real bundle of the
tiny store and fixes the manifest's digests after its change, so each case is
refused by the check it targets, not by a digest mismatch.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import sqlite3
import tarfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from app.core.settings import Settings
from app.core.store import Layer, Model, Probe, ProbeUnit, Store, Unit
from app.core.store.bundle import BadBundle, import_bundle
from tests.support.contents import contents
from tests.support.cli import microscope

Members = dict[str, bytes]


@pytest.fixture(scope="module")
def bundle(tiny_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hostile") / "tiny.tar"
    result = microscope("export", str(path), "--data", str(tiny_settings.data_dir))
    assert result.returncode == 0, result.stderr
    return path


def _members(path: Path) -> Members:
    with tarfile.open(path) as archive:
        return {member.name: archive.extractfile(member).read() for member in archive}  # type: ignore[union-attr]


def _write(path: Path, members: Members, fix: bool = True) -> Path:
    """``members`` as a tar archive, the manifest's digests made to match (what a careful attacker does)."""
    members = dict(members)
    if fix:
        manifest = json.loads(members["manifest.json"])
        manifest["database_sha256"] = hashlib.sha256(members["store.sqlite"]).hexdigest()
        manifest["blobs"] = sorted(name.removeprefix("blobs/") for name in members if name.startswith("blobs/"))
        members["manifest.json"] = json.dumps(manifest).encode()
    with tarfile.open(path, "w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def _edit_database(members: Members, sql: str, tmp: Path) -> Members:
    database = tmp / "edit.sqlite"
    database.write_bytes(members["store.sqlite"])
    with sqlite3.connect(database) as connection:  # foreign keys off: SQLite's default for a plain connection
        connection.executescript(sql)
    connection.close()
    return {**members, "store.sqlite": database.read_bytes()}


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file's digest; SQLite's shared-memory index is left out, and its log must stay empty."""
    if not folder.exists():
        return {}
    files = {str(p.relative_to(folder)): p for p in sorted(folder.rglob("*")) if p.is_file()}
    assert all(p.stat().st_size == 0 for name, p in files.items() if name.endswith("-wal"))
    return {name: hashlib.sha256(p.read_bytes()).hexdigest() for name, p in files.items()
            if not name.endswith(("-shm", "-wal"))}


def _blob(members: Members, extension: str = ".webp") -> str:
    return next(name for name in members if name.startswith("blobs/") and name.endswith(extension))


def _with_member(path: Path, members: Members, extra: tarfile.TarInfo, data: bytes = b"") -> Path:
    _write(path, members)
    with tarfile.open(path, "a") as archive:
        archive.addfile(extra, io.BytesIO(data) if data else None)
    return path


def _link(name: str, kind: bytes, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, target
    return info


def _sparse(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.GNUTYPE_SPARSE
    return info


def _huge_member(path: Path, members: Members, _tmp: Path) -> Path:
    """A blob whose header claims 50 GB: refused from the header, nothing read or allocated."""
    _write(path, members)
    info = tarfile.TarInfo("blobs/" + "0" * 64 + ".png")
    info.size = 50 << 30
    with tarfile.open(path, "a") as archive:  # the header alone, without its 50 GB
        header = info.tobuf(tarfile.GNU_FORMAT)
        archive.fileobj.write(header)
        archive.offset += len(header)
    return path


CASES: dict[str, tuple[Callable[[Path, Members, Path], Path], str]] = {
    "an odd blob key": (lambda p, m, t: _write(p, {**m, "blobs/../../evil.png": b"x"}), "unexpected member"),
    "a name outside the bundle": (lambda p, m, t: _write(p, {**m, "/etc/cron.d/evil": b"x"}), "unexpected member"),
    "a blob of another name": (lambda p, m, t: _write(p, {**m, "blobs/notes.txt": b"x"}), "unexpected member"),
    "a symbolic link": (lambda p, m, t: _with_member(p, m, _link("blobs/" + "1" * 64 + ".png", tarfile.SYMTYPE, "/etc/passwd")),
                        "is a link"),
    "a hard link": (lambda p, m, t: _with_member(p, m, _link("blobs/" + "2" * 64 + ".png", tarfile.LNKTYPE, "store.sqlite")),
                    "is a link"),
    "a sparse member": (lambda p, m, t: _with_member(p, m, _sparse("blobs/" + "3" * 64 + ".png")), "is sparse"),
    "a huge member": (_huge_member, "claims 53,687,091,200 bytes"),
    "a compressed archive": (lambda p, m, t: p.write_bytes(gzip.compress(_write(t / "plain.tar", m).read_bytes())) and p,
                             "not an uncompressed tar"),
    "a changed database": (lambda p, m, t: _write(p, _edit_database(m, "UPDATE units SET label = 'x';", t), fix=False),
                           "does not match the sha256"),
    "a view instead of a table": (lambda p, m, t: _write(p, _edit_database(
        m, "ALTER TABLE edges RENAME TO edges_data; CREATE VIEW edges AS SELECT * FROM edges_data;", t)),
        "holds a view"),
    "a trigger": (lambda p, m, t: _write(p, _edit_database(
        m, "CREATE TRIGGER t AFTER INSERT ON runs BEGIN DELETE FROM units; END;", t)), "holds a trigger"),
    "dangling foreign keys": (lambda p, m, t: _write(p, _edit_database(m, "UPDATE units SET layer_id = 99999 WHERE id = 1;", t)),
                              "pointing at missing rows"),
    "a value of the wrong type": (lambda p, m, t: _write(p, _edit_database(m, "UPDATE units SET \"index\" = 'x' WHERE id = 2;", t)),
                                  "that are not INTEGER"),
    "a missing blob": (lambda p, m, t: _write(p, {k: v for k, v in m.items() if k != _blob(m)}), "which the archive lacks"),
    # The last byte flipped (set to 0 it could already be 0: a WebP's padding).
    "a corrupt blob": (lambda p, m, t: _write(p, {**m, _blob(m): m[_blob(m)][:-1] + bytes([m[_blob(m)][-1] ^ 0xFF])}),
                       "does not match its key"),
    "an unlisted blob": (lambda p, m, t: _write(p, {**m, "blobs/" + hashlib.sha256(b"x").hexdigest() + ".png": b"x"},
                                                fix=False), "not those its manifest lists"),
    "a manifest that is not JSON": (lambda p, m, t: _write(p, {**m, "manifest.json": b"{"}, fix=False), "not JSON"),
    "not a SQLite file": (lambda p, m, t: _write(p, {**m, "store.sqlite": b"SQLite format 3\0" + b"\xff" * 4000}),
                          "not a readable SQLite database"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_hostile_archive_is_refused_with_one_line_and_leaves_the_store_as_it_was(
        case: str, bundle: Path, tmp_path: Path) -> None:
    make, expected = CASES[case]
    hostile = make(tmp_path / "hostile.tar", _members(bundle), tmp_path)
    target = Settings.load(tmp_path / "target")
    with Store.open(target, create=True):  # an existing, empty store
        pass
    before = _snapshot(target.data_dir)
    with pytest.raises(BadBundle, match=expected) as refused:
        import_bundle(hostile, target)
    assert "\n" not in str(refused.value)
    assert _snapshot(target.data_dir) == before, case
    with pytest.raises(BadBundle):  # a store that does not exist yet is not even created
        import_bundle(hostile, Settings.load(tmp_path / "fresh"))
    assert not (tmp_path / "fresh").exists()


def test_the_command_refuses_with_one_line_and_exit_2(bundle: Path, tmp_path: Path) -> None:
    hostile = CASES["a trigger"][0](tmp_path / "hostile.tar", _members(bundle), tmp_path)
    result = microscope("import", str(hostile), "--data", str(tmp_path / "target"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "holds a trigger" in result.stderr
    assert not (tmp_path / "target").exists()


def test_the_round_trip_and_the_manifests_digests(tiny_settings: Settings, bundle: Path, tmp_path: Path) -> None:
    manifest = json.loads(_members(bundle)["manifest.json"])
    assert manifest["database_sha256"] == hashlib.sha256(_members(bundle)["store.sqlite"]).hexdigest()
    assert len(set(manifest["blobs"])) == len(manifest["blobs"]) > 100
    copy = Settings.load(tmp_path / "copy")
    import_bundle(bundle, copy)
    before, after = contents(tiny_settings), contents(copy)
    assert after == {**before, "blobs": before["referenced"]}


def test_export_leaves_users_probes_out_unless_asked(tiny_settings: Settings, tmp_path: Path) -> None:
    """A store with one probe: a plain export holds none of its rows or images; --probes carries them."""
    source = Settings.load(tmp_path / "with-probe")
    shutil.copytree(tiny_settings.data_dir, source.data_dir)
    with Store.open(source) as store, store.transaction() as session:
        model = session.scalar(select(Model))
        unit = session.scalar(select(Unit).join(Layer).where(Layer.model_id == model.id))
        image, heat = store.blobs.put(b"users image", "webp"), store.blobs.put(b"users heatmap", "png")
        store.blobs.flush()
        probe = Probe(model_id=model.id, sha256="f" * 64, public_id="p" * 22, image_key=image, width=1, height=1,
                      classes=[], recipe={}, created_at=datetime(2026, 12, 1))
        session.add(probe)
        session.flush()
        session.add(ProbeUnit(probe_id=probe.id, unit_id=unit.id, rank=0, activation=1.0, y=0, x=0, heatmap_key=heat))
    plain, full = tmp_path / "plain.tar", tmp_path / "full.tar"
    result = microscope("export", str(plain), "--data", str(source.data_dir))
    assert result.returncode == 0 and "users' probes left out" in result.stdout
    assert microscope("export", str(full), "--probes", "--data", str(source.data_dir)).returncode == 0
    assert not {f"blobs/{image}", f"blobs/{heat}"} & set(_members(plain)) and json.loads(_members(plain)["manifest.json"])["rows"].get("probes") is None
    assert {f"blobs/{image}", f"blobs/{heat}"} <= set(_members(full))
    for path, probes in ((plain, 0), (full, 1)):
        target = Settings.load(tmp_path / path.stem)
        import_bundle(path, target)
        assert len(contents(target)["probes"]) == probes
