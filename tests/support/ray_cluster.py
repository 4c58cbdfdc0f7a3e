"""A local Ray cluster (`ray start --head`, two worker slots) for the ``--ray`` tests, and a task killer."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support.serving import free_port

RAY = Path(sys.executable).parent / "ray"


@contextmanager
def ray_cluster(cpus: int = 2) -> Iterator[str]:
    """The address of a head node with ``cpus`` worker slots on loopback, stopped afterwards."""
    # A short folder: Ray's sockets live under it, and socket paths are limited to ~100 characters.
    temp = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0"}
    started = subprocess.run(
        [RAY, "start", "--head", f"--num-cpus={cpus}", "--num-gpus=0", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp}"],
        env=env, capture_output=True, text=True, timeout=180,
    )
    if started.returncode != 0:
        pytest.fail(f"ray start failed: {started.stderr[-2000:]}")
    try:
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def _tasks() -> list[int]:
    """Pids of processes running a task (titled ``ray::run_task``), not their decode workers (children)."""
    rows = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout.splitlines()
    running = {int(pid): int(ppid) for pid, ppid, *args in (row.split(None, 2) for row in rows)
               if args and args[0].startswith("ray::run_task")}
    return [pid for pid, parent in running.items() if parent not in running]


class TaskKiller(threading.Thread):
    """SIGKILLs the first task it sees running, a random 0.1-0.5 s after it appears."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(daemon=True)
        self.delay = random.Random(seed).uniform(0.1, 0.5)
        self.killed: int | None = None
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            tasks = _tasks()
            if tasks:
                time.sleep(self.delay)
                if tasks[0] in _tasks():
                    os.kill(tasks[0], signal.SIGKILL)
                    self.killed = tasks[0]
                    return
            time.sleep(0.02)
