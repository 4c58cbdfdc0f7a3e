"""``microscope serve`` as a real process on a free loopback port, for tests that need a live server."""

from __future__ import annotations

import functools
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def served(data_dir: Path, **settings: str) -> Iterator[str]:
    """The server's base URL while it runs (``settings``: MICROSCOPE_* variables); it is stopped afterwards."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "precompute.cli", "serve", "--data", str(data_dir), "--port", str(port)],
        env={**os.environ, "PYTHONPATH": str(ROOT), **settings}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/index.json", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    else:
        process.kill()
        pytest.fail(f"server did not start: {process.stderr.read().decode()[-2000:]}")
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


@contextmanager
def serve_folder(directory: Path) -> Iterator[str]:
    """``directory`` served over HTTP on loopback, like the public URLs of weights and images."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
