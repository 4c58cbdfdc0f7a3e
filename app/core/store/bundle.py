"""Bundles: a whole store (database and blobs) as one tar archive, to compute on one machine and serve on another.

A bundle holds ``manifest.json``, the rows as an SQLite database
(``store.sqlite``, whatever database the store used) and every blob that a
row points at (``blobs/<sha256>.<ext>``). The manifest carries the
database's SHA256 and the list of blobs (each named by its own SHA256).
Users' probes stay out unless the export asks for them.

Import trusts nothing in an archive it did not make. Everything is checked
before anything is written, and a refusal is one line (`BadBundle`):

- only plain files named as above, each within a size cap and inside the
  archive (no links, folders, devices, sparse members, ``..`` names or
  duplicates; a compressed archive is refused);
- the manifest's digests match the streamed, hashed members, and it lists
  exactly the blobs the archive holds;
- the database, copied out to a staging folder, is opened read-only with
  ``trusted_schema=OFF``: it holds only the store's tables and their indexes
  (no view, no trigger), every column holds values of its type,
  ``PRAGMA foreign_key_check`` and the schema's own foreign keys are clean,
  and every blob a row points at is in the archive.

Only then are the blobs written, then the rows in one transaction; if that
fails, the blobs it wrote go again, and the target store is as it was.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tarfile
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import JSON, DateTime, Engine, Float, Integer, String, Table, create_engine, event, func, insert, select, text

from app.core.errors import StoreError, StoreMissing
from app.core.settings import Settings
from app.core.store.blobs import is_valid_key
from app.core.store.database import Store
from app.core.store.maintenance import BLOB_COLUMNS, PROBE_PARTS, referenced_keys
from app.core.store.schema import SCHEMA_VERSION, Base, Meta, Model, Probe

FORMAT = "neuron-microscope-bundle"
CHUNK = 20_000
#: Members past these sizes are refused before a byte of them is read (blobs are images of a few hundred KB).
MAX_MANIFEST_BYTES = 64 << 20
MAX_BLOB_BYTES = 64 << 20
#: Users' data: exported only when asked (``microscope export --probes``).
PROBE_TABLES = frozenset({Probe.__tablename__, *(part.__tablename__ for part in PROBE_PARTS)})
_READ = 1 << 20


class BadBundle(StoreError):
    """An archive that is not a bundle this microscope wrote, or was changed since."""


@dataclass(frozen=True)
class BundleSummary:
    path: Path
    rows: dict[str, int]
    blobs: int


def _tables(probes: bool) -> list[Table]:
    return [table for table in Base.metadata.sorted_tables
            if table.name != Meta.__tablename__ and (probes or table.name not in PROBE_TABLES)]


def _copy_rows(source: Engine, target: Engine, tables: list[Table]) -> dict[str, int]:
    """Copy ``tables``, ids included, in dependency order, in one target transaction."""
    counts = {}
    with source.connect() as reader, target.begin() as writer:
        for table in tables:
            rows = reader.execute(select(table).order_by(*table.primary_key.columns)).mappings()
            counts[table.name] = 0
            while batch := rows.fetchmany(CHUNK):
                writer.execute(insert(table), [dict(row) for row in batch])
                counts[table.name] += len(batch)
        if target.dialect.name == "postgresql":  # explicit ids leave the sequences behind
            for table in tables:
                if "id" in table.columns and counts.get(table.name):
                    writer.execute(text(
                        f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), (SELECT max(id) FROM {table.name}))"
                    ))
    return counts


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(_READ):
            digest.update(chunk)
    return digest.hexdigest()


def export_bundle(store: Store, path: Path, probes: bool = False) -> BundleSummary:
    """Write ``store`` to ``path`` (a tar archive), atomically; users' probes only where ``probes``."""
    tables = _tables(probes)
    with tempfile.TemporaryDirectory() as work:
        database = Path(work) / "store.sqlite"
        target = create_engine(f"sqlite:///{database}")
        Base.metadata.create_all(target)
        with target.begin() as connection:
            connection.execute(insert(Meta), [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])
        rows = _copy_rows(store.engine, target, tables)
        target.dispose()
        with store.engine.connect() as connection:
            keys = sorted(referenced_keys(connection, probes=probes))
        missing = sorted(set(keys) - store.blobs.keys())
        if missing:
            raise StoreError(f"the store lacks {len(missing)} blobs its rows point at (e.g. {missing[0]})")
        manifest = {"format": FORMAT, "schema_version": SCHEMA_VERSION, "rows": rows, "probes": probes,
                    "created_at": datetime.now(UTC).isoformat(), "database_sha256": _sha256(database), "blobs": keys}
        (Path(work) / "manifest.json").write_text(json.dumps(manifest, indent=1))
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", suffix=".tar", delete=False) as partial:
            with tarfile.open(fileobj=partial, mode="w", format=tarfile.PAX_FORMAT) as archive:
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


# Import: the archive ------------------------------------------------------------------------


def _kind(member: tarfile.TarInfo) -> str:
    if member.issym() or member.islnk():
        return "link"
    return "folder" if member.isdir() else "device or fifo"


def _members(path: Path, archive: tarfile.TarFile) -> dict[str, tarfile.TarInfo]:
    """The archive's members by name, each a plain file of an expected name within its cap."""
    size = path.stat().st_size
    found: dict[str, tarfile.TarInfo] = {}
    for member in archive:
        name = member.name
        if member.issparse():
            raise BadBundle(f"{path}: member {name!r} is sparse; a bundle holds plain files only")
        if not member.isreg():
            raise BadBundle(f"{path}: member {name!r} is a {_kind(member)}; a bundle holds plain files only")
        if name not in ("manifest.json", "store.sqlite") and not (name.startswith("blobs/") and is_valid_key(name[6:])):
            raise BadBundle(f"{path}: unexpected member {name!r} (a bundle holds manifest.json, store.sqlite "
                            "and blobs/<sha256>.<webp|png|jpg>)")
        if name in found:
            raise BadBundle(f"{path}: member {name!r} appears twice")
        cap = MAX_MANIFEST_BYTES if name == "manifest.json" else MAX_BLOB_BYTES if name != "store.sqlite" else size
        if member.size > cap:
            raise BadBundle(f"{path}: member {name!r} claims {member.size:,} bytes (at most {cap:,})")
        if member.offset_data + member.size > size:
            raise BadBundle(f"{path}: member {name!r} claims {member.size:,} bytes, more than the archive holds")
        found[name] = member
    for needed in ("manifest.json", "store.sqlite"):
        if needed not in found:
            raise BadBundle(f"{path} is not a bundle: it has no {needed}")
    return found


def _chunks(archive: tarfile.TarFile, member: tarfile.TarInfo) -> Iterator[bytes]:
    """A member's bytes, streamed (never more than its header's size)."""
    stream: IO[bytes] | None = archive.extractfile(member)
    assert stream is not None  # a regular file, checked by `_members`
    left = member.size
    while left > 0:
        chunk = stream.read(min(_READ, left))
        if not chunk:
            raise BadBundle(f"member {member.name!r} ends early: the archive is truncated")
        left -= len(chunk)
        yield chunk


def _read(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    return b"".join(_chunks(archive, member))


def _manifest(path: Path, archive: tarfile.TarFile, members: dict[str, tarfile.TarInfo]) -> dict[str, Any]:
    try:
        manifest = json.loads(_read(archive, members["manifest.json"]))
    except (ValueError, UnicodeDecodeError):
        raise BadBundle(f"{path} is not a bundle: its manifest.json is not JSON") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BadBundle(f"{path} is not a {FORMAT}")
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise BadBundle(f"{path} has schema version {manifest.get('schema_version')}, this microscope reads "
                        f"{SCHEMA_VERSION}: export it again with this version")
    digest, listed = manifest.get("database_sha256"), manifest.get("blobs")
    if not isinstance(digest, str) or not isinstance(listed, list) or not all(isinstance(k, str) for k in listed):
        raise BadBundle(f"{path}: its manifest lacks the database's sha256 or the list of blobs")
    held = {name.removeprefix("blobs/") for name in members if name.startswith("blobs/")}
    if set(listed) != held or len(listed) != len(held):
        extra, lacking = sorted(held - set(listed)), sorted(set(listed) - held)
        raise BadBundle(f"{path}: its blobs are not those its manifest lists ("
                        + (f"{len(lacking)} missing, e.g. {lacking[0]}" if lacking else f"{len(extra)} unlisted, e.g. {extra[0]}")
                        + ")")
    return manifest


def _stage_database(path: Path, archive: tarfile.TarFile, member: tarfile.TarInfo, expected: str, work: Path) -> Path:
    """Copy the database out, hashing it on the way; refuse it unless it is the one the manifest names."""
    staged, digest = work / "store.sqlite", hashlib.sha256()
    with staged.open("wb") as file:
        for chunk in _chunks(archive, member):
            digest.update(chunk)
            file.write(chunk)
    if digest.hexdigest() != expected:
        raise BadBundle(f"{path}: store.sqlite does not match the sha256 its manifest gives")
    return staged


def _check_blobs(path: Path, archive: tarfile.TarFile, members: list[tarfile.TarInfo]) -> None:
    for member in members:
        digest = hashlib.sha256()
        for chunk in _chunks(archive, member):
            digest.update(chunk)
        if digest.hexdigest() != member.name.removeprefix("blobs/").split(".")[0]:
            raise BadBundle(f"{path}: blob {member.name.removeprefix('blobs/')} does not match its key; the bundle is corrupt")


# Import: the database -----------------------------------------------------------------------


def _untrusted(database: Path) -> sqlite3.Connection:
    """The staged database, read-only and immutable, with its schema's SQL functions untrusted."""
    connection = sqlite3.connect(f"file:{database}?mode=ro&immutable=1", uri=True)
    connection.execute("PRAGMA trusted_schema=OFF")
    connection.execute("PRAGMA cell_size_check=ON")
    return connection


def _allowed_types(column: Any) -> tuple[set[str], str | None]:
    """The SQLite storage classes a column's values may have, and an SQL condition each value must meet."""
    kind, name = column.type, f'"{column.name}"'
    if isinstance(kind, Integer):
        types, condition = {"integer"}, None
    elif isinstance(kind, Float):
        types, condition = {"real", "integer"}, None
    elif isinstance(kind, JSON):
        types, condition = {"text"}, f"json_valid({name})"
    elif isinstance(kind, String):
        types, condition = {"text"}, f"length({name}) <= {kind.length}" if kind.length else None
    elif isinstance(kind, DateTime):
        types, condition = {"text"}, None
    else:  # a column type this check does not know: no store table has one
        raise AssertionError(f"no type check for {column}")
    return types | ({"null"} if column.nullable else set()), condition


def _check_tables(connection: sqlite3.Connection) -> None:
    """Only the store's tables and indexes, each with the store's columns holding values of their types."""
    tables = {table.name: table for table in Base.metadata.sorted_tables}
    objects = connection.execute("SELECT type, name FROM sqlite_master").fetchall()
    for kind, name in objects:
        if kind not in ("table", "index"):
            raise BadBundle(f"its database holds a {kind} ({name!r}); only tables are accepted")
    for kind, name in objects:
        if kind == "table" and name not in tables and name != "sqlite_sequence":
            raise BadBundle(f"its database holds a table {name!r} that is not the store's")
    for table in tables.values():
        present = {row[1] for row in connection.execute(f'PRAGMA table_info("{table.name}")')}
        lacking = [column.name for column in table.columns if column.name not in present]
        if lacking:
            raise BadBundle(f"its table {table.name!r} lacks the column(s) {', '.join(lacking)}")
        for column in table.columns:
            types, condition = _allowed_types(column)
            listed = ", ".join(f"'{t}'" for t in sorted(types))
            where = f'typeof("{column.name}") NOT IN ({listed})'
            if condition:
                where += f' OR ("{column.name}" IS NOT NULL AND NOT ({condition}))'
            bad = connection.execute(f'SELECT count(*) FROM "{table.name}" WHERE {where}').fetchone()[0]
            if bad:
                raise BadBundle(f"its table {table.name!r} has {bad} value(s) of {column.name!r} that are not {column.type}")


def _check_references(connection: sqlite3.Connection, blobs: set[str]) -> None:
    """Foreign keys (SQLite's own check, and the schema's, whatever the file declares) and blob keys."""
    dangling = connection.execute("PRAGMA foreign_key_check").fetchone()
    if dangling:
        raise BadBundle(f"its table {dangling[0]!r} has rows pointing at missing rows of {dangling[2]!r}")
    for table in Base.metadata.sorted_tables:
        for key in table.foreign_keys:
            column, target = key.parent.name, key.column
            count = connection.execute(
                f'SELECT count(*) FROM "{table.name}" AS t LEFT JOIN "{target.table.name}" AS r '
                f'ON t."{column}" = r."{target.name}" WHERE t."{column}" IS NOT NULL AND r."{target.name}" IS NULL'
            ).fetchone()[0]
            if count:
                raise BadBundle(f"its table {table.name!r} has {count} row(s) whose {column} points at no "
                                f"row of {target.table.name!r}")
    for column in BLOB_COLUMNS:
        name, table = column.key, column.class_.__tablename__
        for (key,) in connection.execute(f'SELECT DISTINCT "{name}" FROM "{table}" WHERE "{name}" IS NOT NULL'):
            if key not in blobs:
                raise BadBundle(f"its table {table!r} points at the blob {key!r}, which the archive lacks")


def _check_database(path: Path, database: Path, blobs: set[str]) -> None:
    try:
        connection = _untrusted(database)
        try:
            if connection.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise BadBundle("its database fails SQLite's integrity check")
            _check_tables(connection)
            version = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if version is None or version[0] != str(SCHEMA_VERSION):
                raise BadBundle(f"its database's schema version is not {SCHEMA_VERSION}")
            _check_references(connection, blobs)
        finally:
            connection.close()
    except BadBundle as refusal:
        raise BadBundle(f"{path}: {refusal}") from None
    except sqlite3.DatabaseError as error:
        raise BadBundle(f"{path}: store.sqlite is not a readable SQLite database ({error})") from None


# Import: writing ----------------------------------------------------------------------------


def _refuse_a_full_store(settings: Settings) -> None:
    try:
        with Store.open(settings, readonly=True) as store, store.engine.connect() as connection:
            if connection.execute(select(func.count()).select_from(Model)).scalar_one():
                raise StoreError(f"{settings.database_url} already holds a store; import into an empty one")
    except StoreMissing:
        return


@contextmanager
def _open(path: Path) -> Iterator[tarfile.TarFile]:
    if not path.is_file():
        raise StoreError(f"no bundle at {path}")
    try:
        archive = tarfile.open(path, mode="r:")  # uncompressed only: microscope export writes plain tar
    except tarfile.ReadError:
        raise BadBundle(f"{path} is not a bundle: not an uncompressed tar archive") from None
    try:
        yield archive
    except (tarfile.TarError, EOFError) as error:
        raise BadBundle(f"{path} is not a readable archive: {error}") from None
    finally:
        archive.close()


def _source(database: Path) -> Engine:
    engine = create_engine(f"sqlite:///file:{database}?mode=ro&immutable=1&uri=true")
    event.listen(engine, "connect", lambda connection, _record: connection.execute("PRAGMA trusted_schema=OFF"))
    return engine


def _write(archive: tarfile.TarFile, settings: Settings, database: Path, blobs: list[tarfile.TarInfo]) -> dict[str, int]:
    """Blobs first, then the rows in one transaction; on failure the blobs this wrote go again."""
    source = _source(database)
    written: list[str] = []
    try:
        with Store.open(settings, create=True) as store:
            try:
                for member in blobs:
                    key = member.name.removeprefix("blobs/")
                    if not store.blobs.has(key):
                        store.blobs.put(_read(archive, member), key.rsplit(".", 1)[1])
                        written.append(key)
                store.blobs.flush()
                return _copy_rows(source, store.engine, _tables(probes=True))
            except BaseException:
                for key in written:
                    store.blobs.remove(key)
                raise
    finally:
        source.dispose()


def import_bundle(path: Path, settings: Settings) -> BundleSummary:
    """Read a bundle into the empty (or new) store of ``settings``; a bad bundle writes nothing."""
    with _open(path) as archive, tempfile.TemporaryDirectory(prefix="microscope-import-") as work:
        members = _members(path, archive)
        manifest = _manifest(path, archive, members)
        _refuse_a_full_store(settings)
        blobs = [member for name, member in members.items() if name.startswith("blobs/")]
        database = _stage_database(path, archive, members["store.sqlite"], manifest["database_sha256"], Path(work))
        _check_database(path, database, {member.name.removeprefix("blobs/") for member in blobs})
        _check_blobs(path, archive, blobs)
        rows = _write(archive, settings, database, blobs)
    return BundleSummary(path, rows, len(blobs))
