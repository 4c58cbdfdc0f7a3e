"""Opening a store: the database engine plus the blob folder, schema-checked."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, select, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from tenacity import Retrying, retry_if_exception, retry_if_exception_type, stop_after_attempt, wait_random_exponential

from app.core.errors import StoreError, StoreMissing
from app.core.settings import Settings
from app.core.store.blobs import open_blobs
from app.core.store.schema import ADDITIVE_SINCE, SCHEMA_VERSION, Base, Layer, Meta, Model, Probe, new_probe_id


#: How long a SQLite writer waits for another's lock before "database is locked" (Python's default is 5 s).
BUSY_SECONDS = 30
#: Runs of one transaction before "database is locked" is an error.
WRITE_ATTEMPTS = 4


def _locked(error: BaseException) -> bool:
    """SQLite's lock errors. The busy timeout does not cover them all: a transaction that read before
    another writer committed cannot upgrade to a write lock ("database is locked" at once, in WAL mode)."""
    return isinstance(error, OperationalError) and any(
        words in str(error) for words in ("database is locked", "database is busy", "database table is locked"))


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DB-API objects
    """Every connection's settings (SQLite keeps them per connection, not per file)."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={BUSY_SECONDS * 1000}")
    cursor.close()


def _engine(url: str, readonly: bool, create: bool) -> Engine:
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        options = {"postgresql_readonly": True} if readonly else {}
        return create_engine(url, pool_pre_ping=True).execution_options(**options)
    database = parsed.database
    if not database or database == ":memory:":
        raise StoreError("a store needs a database file, not an in-memory SQLite database")
    if not create and not Path(database).is_file():
        raise StoreMissing(f"no store at {database}: run `microscope precompute catalog` first")
    if readonly:
        # SQLite's URI form opens the file read-only: the server cannot write by mistake.
        engine = create_engine(
            f"sqlite:///file:{Path(database).resolve()}?mode=ro&uri=true",
            connect_args={"check_same_thread": False, "timeout": BUSY_SECONDS},
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": BUSY_SECONDS})
    # Before the first connection: the pool keeps that one, and every transaction may reuse it.
    event.listen(engine, "connect", _sqlite_pragmas)
    with engine.connect() as connection:
        # Write-ahead logging lets the server read while a precompute stage writes.
        connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    return engine


class Store:
    """A database plus its blobs (a folder or a bucket). Open it with `Store.open`; close it when done."""

    def __init__(self, settings: Settings, engine: Engine, readonly: bool) -> None:
        self.settings = settings
        self.engine = engine
        self.readonly = readonly
        self.blobs = open_blobs(settings.blobs_url, settings.blob_dir)
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @classmethod
    def open(cls, settings: Settings, *, readonly: bool = False, create: bool = False) -> Store:
        """Open the store (creating it only where ``create``); refuse one of another schema version."""
        engine = _engine(settings.database_url, readonly, create and not readonly)
        try:
            version = _schema_version(engine)
            if version is None:
                if readonly or not create:
                    raise StoreMissing(f"{settings.database_url} holds no microscope store: run `microscope precompute catalog`")
                version = _create(engine)
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"the store at {settings.database_url} has schema version {version}, newer than this "
                    f"microscope's {SCHEMA_VERSION}: upgrade neuron-microscope to read it"
                )
            if ADDITIVE_SINCE <= version < SCHEMA_VERSION and not readonly:
                version = _upgrade(engine, version)
            if version < SCHEMA_VERSION:
                remedy = ("run `microscope precompute catalog` once to upgrade it in place" if version >= ADDITIVE_SINCE
                          else "export it with the older version or recompute it")
                raise StoreError(
                    f"the store at {settings.database_url} has schema version {version}, older than this "
                    f"microscope's {SCHEMA_VERSION}: {remedy}"
                )
        except Exception:
            engine.dispose()
            raise
        return cls(settings, engine, readonly)

    @contextmanager
    def session(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    def retrying(self, also: tuple[type[BaseException], ...] = ()) -> Retrying:
        """Attempts at one transaction, each a fresh run of its block: a lock error (or one of ``also``)
        runs it again, at most `WRITE_ATTEMPTS` times, then is raised::

            for attempt in store.retrying():
                with attempt, store.transaction() as session:
                    ...
        """
        return Retrying(retry=retry_if_exception(_locked) | retry_if_exception_type(also), reraise=True,
                        stop=stop_after_attempt(WRITE_ATTEMPTS), wait=wait_random_exponential(multiplier=0.2, max=5))

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session whose work commits at the end of the block, or not at all."""
        with self._sessions() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _create(engine: Engine) -> int:
    """Create the tables; when shards race to create one store, the losers find the winner's."""
    for attempt in range(10):
        try:
            with Session(engine) as session, session.begin():
                Base.metadata.create_all(session.connection())
                session.add(Meta(key="schema_version", value=str(SCHEMA_VERSION)))
            return SCHEMA_VERSION
        except DBAPIError:
            time.sleep(0.1 * (attempt + 1))
            version = _schema_version(engine)
            if version is not None:
                return version
    raise StoreError(f"could not create a store at {engine.url}")


def _upgrade(engine: Engine, version: int) -> int:
    """Bring a store of an older version up to date: the tables and nullable columns added since, and renames."""
    with Session(engine) as session, session.begin():
        connection = session.connection()
        Base.metadata.create_all(connection)
        inspector = inspect(connection)
        for table in Base.metadata.sorted_tables:
            present = {column["name"] for column in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name not in present:
                    kind = column.type.compile(dialect=engine.dialect)
                    connection.execute(text(f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {kind}'))
        for table in Base.metadata.sorted_tables:  # create_all makes the indexes of new tables only
            for index in table.indexes:
                index.create(connection, checkfirst=True)
        if version < 4:
            _rename_caffe_inception(session)
        if version < 5:
            _name_probes(session)
        if version < 11:  # superseded by sanity_steps; its figures scored constant maps as decorrelated
            connection.execute(text("DROP TABLE IF EXISTS attribution_checks"))
        session.get(Meta, "schema_version").value = str(SCHEMA_VERSION)
    return SCHEMA_VERSION


def _rename_caffe_inception(session: Session) -> None:
    """Schema 4: a store's ``inceptionv1`` made before version 4 is the BVLC GoogLeNet, now ``inceptionv1_caffe``.

    Told apart by its architecture, not trusted by name: the BVLC mixed4a has 512 channels, the
    inception5h one 508. Rows keep their ids, so every unit, image, example and edge follows.
    """
    model = session.scalar(select(Model).where(Model.name == "inceptionv1"))
    if model is None or session.scalar(select(Model).where(Model.name == "inceptionv1_caffe")) is not None:
        return
    mixed4a = session.scalar(select(Layer.channels).where(Layer.model_id == model.id, Layer.name == "mixed4a"))
    if mixed4a == 512:
        model.name = "inceptionv1_caffe"


def _name_probes(session: Session) -> None:
    """Schema 5: give every probe stored before it a random public id (its URL was its image's digest)."""
    for probe in session.scalars(select(Probe).where(Probe.public_id.is_(None))):
        probe.public_id = new_probe_id()


def _schema_version(engine: Engine) -> int | None:
    if not inspect(engine).has_table(Meta.__tablename__):
        return None
    with Session(engine) as session:
        value = session.scalar(select(Meta.value).where(Meta.key == "schema_version"))
    if value is None or not value.isdigit():
        raise StoreError(f"{engine.url} has a meta table without a schema version: not a microscope store")
    return int(value)
