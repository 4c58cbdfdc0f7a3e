"""What the server holds between requests: the read-only store, the catalog, cached coverage."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import anyio
from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from app.access import Limiter
from app.catalog import Catalog
from app.core.settings import Settings
from app.core.jobs import JobQueue
from app.core.store import Artifact, Layer, Run, Store
from app.core.store.blobs import is_valid_key, media_type
from app.core.store.summary import ModelCoverage, coverage

log = logging.getLogger("microscope.server")


@dataclass
class BlobReader:
    store: Store

    def has_key(self, key: str) -> bool:
        return is_valid_key(key) and self.store.blobs.has(key)

    def local_path(self, key: str):  # noqa: ANN201 - a Path, or None for object storage
        return self.store.blobs.local_path(key)

    def get(self, key: str) -> bytes:
        return self.store.blobs.get(key)

    def signed_url(self, key: str, seconds: int) -> str | None:
        """A presigned URL of an object-storage blob, where the settings ask for redirects."""
        return self.store.blobs.signed_url(key, seconds) if self.store.settings.blobs_redirect else None


#: Uploads checked at once; more wait their turn (a decoded 40 MP image is 120 MB of pixels).
UPLOAD_CHECKS = 4


@dataclass
class ServerState:
    """Built once by `create_app`; shared by every request."""

    store: Store
    _catalog: Catalog | None = None
    _catalog_version: tuple | None = None
    _coverage: tuple[tuple[int | None, int], list[ModelCoverage]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _queue: JobQueue | None | bool = False
    limiter: Limiter = field(init=False)
    #: Uploads hashed and decoded at once, off the event loop (each holds a thread and up to a decoded image).
    upload_checks: anyio.CapacityLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = Limiter(self.store.settings.rate_limit)
        self.upload_checks = anyio.CapacityLimiter(UPLOAD_CHECKS)

    @property
    def settings(self) -> Settings:
        return self.store.settings

    def queue(self) -> JobQueue | None:
        """The job queue the live features write to; None where it cannot be opened (a read-only directory)."""
        with self._lock:
            if self._queue is False:
                try:
                    self._queue = JobQueue.for_store(self.store.settings)
                except Exception as error:  # noqa: BLE001 - sqlite3 or redis errors alike: the live side is off
                    log.warning("no job queue (%s): rendering on demand and probes are off", error)
                    self._queue = None
            return self._queue  # type: ignore[return-value]

    @property
    def engine(self):  # noqa: ANN201 - an Engine
        return self.store.engine

    @property
    def blobs(self) -> BlobReader:
        return BlobReader(self.store)

    @staticmethod
    def media_type(key: str) -> str:
        return media_type(key)

    def catalog(self, connection: Connection, model: str | None = None) -> Catalog:
        """The catalog, reloaded when a model is asked for that it does not hold (catalogued since) or the layers
        changed (a factors stage added or refitted a derived layer: one aggregate over the small layers table)."""
        version = tuple(connection.execute(select(func.count(Layer.id), func.max(Layer.id), func.sum(Layer.channels))).one())
        with self._lock:
            if (self._catalog is None or version != self._catalog_version
                    or (model is not None and model not in self._catalog.models)):
                self._catalog = Catalog.load(connection)
                self._catalog_version = version
            return self._catalog

    def coverage(self, connection: Connection) -> list[ModelCoverage]:
        """Coverage counts scan whole tables: recomputed only when a precompute run has finished since."""
        version = tuple(connection.execute(
            select(func.max(Run.id), func.count(Run.finished_at), select(func.max(Artifact.id)).scalar_subquery())
        ).one())
        with self._lock:
            if self._coverage is None or self._coverage[0] != version:
                with Session(bind=connection) as session:
                    self._coverage = (version, coverage(session))  # type: ignore[assignment]
            return self._coverage[1]
