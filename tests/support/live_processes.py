"""``microscope worker`` as a real process, for the kill and browser tests of the live side."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.core.jobs import JobQueue
from app.core.settings import Settings
from tests.conftest import ROOT

#: Small renders, so that a test's jobs take seconds (the recipe machinery is the same at any size).
TINY_ARGS = ["--steps", "24", "--early-steps", "24", "--size", "48"]


def start_worker(data: Path, weights: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "precompute.cli", "worker", "--data", str(data), "--weights", str(weights),
         "--device", "cpu", *TINY_ARGS, *extra],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def wait_for_heartbeat(queue: JobQueue, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not any(beat.pid == process.pid and beat.alive for beat in queue.workers()):
        if process.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"worker did not start: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
        time.sleep(0.1)


@contextmanager
def running_worker(settings: Settings, weights: Path, *extra: str) -> Iterator[subprocess.Popen]:
    process = start_worker(settings.data_dir, weights, *extra)
    try:
        wait_for_heartbeat(JobQueue.for_store(settings), process)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
