"""A local S3-compatible server (moto's server mode, a real HTTP server) for the object-storage tests."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from tests.support.serving import free_port

#: The environment a client needs to reach the local server (obstore reads the standard AWS_* variables).
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "microscope", "AWS_SECRET_ACCESS_KEY": "microscope", "AWS_REGION": "us-east-1",
               "AWS_ALLOW_HTTP": "true"}


@contextmanager
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto server on a free loopback port, stopped afterwards."""
    port = free_port()
    # Its request log goes to a file: a pipe nobody reads fills up and stalls the server.
    log = tempfile.TemporaryFile()
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               stdout=subprocess.DEVNULL, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            httpx.get(endpoint + "/moto-api/", timeout=1)
            break
        except httpx.HTTPError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                log.seek(0)
                pytest.fail(f"moto server did not start: {log.read().decode()[-2000:]}")
            time.sleep(0.1)
    try:
        yield endpoint
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def new_bucket(endpoint: str) -> str:
    """A fresh, empty bucket's ``s3://`` URL with a prefix (an anonymous PUT creates it on the local server)."""
    name = f"microscope-{uuid.uuid4().hex[:12]}"
    assert httpx.put(f"{endpoint}/{name}").status_code == 200
    return f"s3://{name}/store"
