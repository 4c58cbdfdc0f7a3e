"""Settings, read once from the environment or command-line flags, checked up front.

Every ``MICROSCOPE_*`` variable the code reads is a field here, with its type
and default; `Settings.load` parses all of them at start-up, and a malformed
value stops start-up with one line naming the variable (`SettingsError`).
Nothing else reads the environment for a setting.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from app.core.errors import MicroscopeError, StoreError

DEFAULT_DATA_DIR = Path("microscope-data")
DATABASE_FILE = "microscope.sqlite"

#: What the live side lets visitors do: nothing, ask for renders, or renders and probes of their images.
LivePolicy = Literal["off", "renders", "all"]


class SettingsError(MicroscopeError):
    """A ``MICROSCOPE_*`` variable (or its flag) holds a value that cannot be used."""


def _positive(name: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise SettingsError(f"{name} is a whole number, not {value!r}") from None
    if number < 1:
        raise SettingsError(f"{name} is at least 1, not {number}")
    return number


def _flag(name: str, value: str) -> bool:
    if value not in ("0", "1"):
        raise SettingsError(f"{name} is 0 or 1, not {value!r}")
    return value == "1"


def _policy(name: str, value: str) -> str:
    if value not in ("off", "renders", "all"):
        raise SettingsError(f"{name} is off, renders or all, not {value!r}")
    return value


def _rate(name: str, value: str) -> str:
    from limits import parse

    try:
        parse(value)
    except ValueError:
        raise SettingsError(f"{name} is a rate such as '30/minute', not {value!r}") from None
    return value


def _text(name: str, value: str) -> str:  # noqa: ARG001 - every parser takes the name
    return value


#: Each field's variable and parser (fields without one are flags only).
_VARIABLES: dict[str, tuple[str, Callable[[str, str], Any]]] = {
    "queue_url": ("MICROSCOPE_QUEUE", _text),
    "queue_limit": ("MICROSCOPE_QUEUE_LIMIT", _positive),
    "probe_max_bytes": ("MICROSCOPE_PROBE_MAX_BYTES", _positive),
    "probe_max_pixels": ("MICROSCOPE_PROBE_MAX_PIXELS", _positive),
    "blobs_redirect": ("MICROSCOPE_BLOBS_REDIRECT", _flag),
    "live": ("MICROSCOPE_LIVE", _policy),
    "host": ("MICROSCOPE_HOST", _text),
    "token": ("MICROSCOPE_TOKEN", _text),
    "trust_forwarded": ("MICROSCOPE_TRUST_FORWARDED", _flag),
    "rate_limit": ("MICROSCOPE_RATE_LIMIT", _rate),
    "client_jobs": ("MICROSCOPE_CLIENT_JOBS", _positive),
    "upload_quota_bytes": ("MICROSCOPE_UPLOAD_QUOTA_BYTES", _positive),
    "probe_days": ("MICROSCOPE_PROBE_DAYS", _positive),
    "images_url": ("MICROSCOPE_IMAGES_URL", _text),
    "weights_mirror": ("MICROSCOPE_WEIGHTS_MIRROR", _text),
}


@dataclass(frozen=True)
class Settings:
    """Where a store lives and how the server and workers behave; see docs/settings.md."""

    data_dir: Path
    database_url: str
    #: ``s3://bucket/prefix`` where blobs live in object storage; None: the folder ``data_dir/blobs``.
    blobs_url: str | None = None
    #: Serve object-storage blobs as redirects to presigned URLs instead of passing their bytes through.
    blobs_redirect: bool = False
    #: The job queue: a Redis URL or a SQLite file; None: ``queue.sqlite3`` in the store directory.
    queue_url: str | None = None
    #: Pending jobs of a model past which requests are refused (a 503).
    queue_limit: int = 5000
    probe_max_bytes: int = 10_000_000
    probe_max_pixels: int = 40_000_000
    #: The live side's policy; None: ``all`` when the server listens on loopback only, else ``off``.
    live: LivePolicy | None = None
    #: The interface ``microscope serve`` listens on (decides the default policy).
    host: str = "127.0.0.1"
    #: A secret that every POST must carry (header ``X-Microscope-Token``, form field ``token``, or the
    #: login cookie); None: no token asked.
    token: str | None = None
    #: Take the client's address from ``X-Forwarded-For`` (only behind a proxy that sets it).
    trust_forwarded: bool = False
    #: Live requests (POSTs) one client may make, in the ``limits`` package's notation.
    rate_limit: str = "30/minute"
    #: Jobs one client may have waiting at once.
    client_jobs: int = 50
    #: Bytes of uploads that may wait in the queue at once, all clients together.
    upload_quota_bytes: int = 200_000_000
    #: Probes older than this are removed by workers (no manual gc needed).
    probe_days: int = 30
    #: A mirror of the default image sample (precompute); None: the sample's public originals.
    images_url: str | None = None
    #: A mirror of ``https://download.pytorch.org/models/`` for torchvision's weights (precompute).
    weights_mirror: str | None = None

    @classmethod
    def load(cls, data_dir: Path | None = None, database_url: str | None = None, blobs_url: str | None = None,
             environ: Mapping[str, str] | None = None, **flags: Any) -> Settings:
        """Flags first, then the ``MICROSCOPE_*`` variables, then the defaults; every value checked here."""
        env = os.environ if environ is None else environ
        data_dir = data_dir or Path(env.get("MICROSCOPE_DATA") or DEFAULT_DATA_DIR)
        database_url = database_url or env.get("MICROSCOPE_DATABASE_URL") or ""
        if not database_url:
            database_url = f"sqlite:///{(data_dir / DATABASE_FILE).resolve()}"
        try:
            make_url(database_url)
        except ArgumentError as error:
            raise StoreError(f"MICROSCOPE_DATABASE_URL is not a database URL: {database_url!r}") from error
        blobs_url = blobs_url or env.get("MICROSCOPE_BLOBS") or None
        if blobs_url is not None and not blobs_url.startswith("s3://"):
            raise StoreError(f"MICROSCOPE_BLOBS is not an s3://bucket/prefix URL: {blobs_url!r}")
        values: dict[str, Any] = {}
        for field, (variable, parse) in _VARIABLES.items():
            if flags.get(field) is not None:
                values[field] = flags[field]
            elif env.get(variable):
                values[field] = parse(variable, env[variable])
        unknown = set(flags) - set(_VARIABLES)
        if unknown:
            raise TypeError(f"unknown settings {sorted(unknown)}")
        return cls(data_dir=data_dir.resolve(), database_url=database_url, blobs_url=blobs_url, **values)

    @property
    def blob_dir(self) -> Path:
        return self.data_dir / "blobs"

    @property
    def live_policy(self) -> LivePolicy:
        """The policy in force: the setting, else ``all`` on a loopback-only server and ``off`` otherwise."""
        if self.live is not None:
            return self.live
        return "all" if _loopback(self.host) else "off"

    def environment(self) -> dict[str, str]:
        """These settings as ``MICROSCOPE_*`` variables (for a server's worker processes started by uvicorn)."""
        found = {"MICROSCOPE_DATA": str(self.data_dir), "MICROSCOPE_DATABASE_URL": self.database_url}
        if self.blobs_url:
            found["MICROSCOPE_BLOBS"] = self.blobs_url
        for field, (variable, _) in _VARIABLES.items():
            value = getattr(self, field)
            if value is not None and value != _DEFAULTS[field]:
                found[variable] = ("1" if value else "0") if isinstance(value, bool) else str(value)
        return found


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_DEFAULTS = {field.name: field.default for field in fields(Settings)}


def variables() -> dict[str, str]:
    """Every settings field's environment variable (docs/settings.md's table lists each)."""
    return {"data_dir": "MICROSCOPE_DATA", "database_url": "MICROSCOPE_DATABASE_URL", "blobs_url": "MICROSCOPE_BLOBS",
            **{field: variable for field, (variable, _) in _VARIABLES.items()}}
