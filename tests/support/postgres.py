"""A real PostgreSQL server on loopback for the tests (Debian's ``postgresql`` package).

Started once per test session in a temporary folder, on a free port,
listening on 127.0.0.1 only; each test gets a database of its own.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import count

_names = count()


def _binaries() -> str:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL server binaries not found: apt-get install postgresql"
    return os.path.dirname(found[-1])


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the package's postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield the base URL of a fresh server; stop it and remove its files afterwards."""
    binaries = _binaries()
    folder = tempfile.mkdtemp(prefix="microscope-pg-")
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data = os.path.join(folder, "data")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    subprocess.run(_as_postgres([f"{binaries}/initdb", "-D", data, "-A", "trust", "-U", "microscope", "--no-sync"]),
                   check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50"
    subprocess.run(_as_postgres([f"{binaries}/pg_ctl", "-D", data, "-o", options, "-l", f"{folder}/log", "-w", "start"]),
                   check=True, capture_output=True)
    try:
        yield f"postgresql+psycopg://microscope@127.0.0.1:{port}"
    finally:
        subprocess.run(_as_postgres([f"{binaries}/pg_ctl", "-D", data, "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)


def new_database(base_url: str) -> str:
    """A new, empty database on the server; its SQLAlchemy URL."""
    import psycopg

    name = f"store_{os.getpid()}_{next(_names)}"
    dsn = base_url.replace("postgresql+psycopg://", "postgresql://") + "/postgres"
    for attempt in range(50):
        try:
            with psycopg.connect(dsn, autocommit=True) as connection:
                connection.execute(f'CREATE DATABASE "{name}"')
            return f"{base_url}/{name}"
        except psycopg.OperationalError:
            time.sleep(0.1 * (attempt + 1))
    raise RuntimeError("PostgreSQL did not accept connections")
