"""The worker SIGKILLed mid-probe and mid-render, then restarted: every job completes exactly once.

The same jobs run in a store by an uninterrupted worker and in another by a
worker killed while a probe, then a render, is in flight (its in-flight
journal names the job); a restarted worker takes them up again. After
``microscope gc`` both stores hold the same rows and blobs, none orphaned,
and the queue is empty.
"""

from __future__ import annotations

import random
import signal
import time
from pathlib import Path

import pytest

from app.jobs import JobQueue
from app.settings import Settings
from tests.contents import contents
from tests.live_processes import start_worker
from tests.test_cli import microscope
from tests.test_live import copy_store, jpeg

MODEL = "inceptionv1"
RENDERS = [("mixed3b", [10]), ("mixed3b", [11]), ("conv2d1", [3]), ("mixed3a", [20, 21, 22, 23])]


def queue_jobs(settings: Settings, photo: bytes) -> JobQueue:
    import hashlib

    queue = JobQueue.for_store(settings)
    queue.request_probe(MODEL, hashlib.sha256(photo).hexdigest(), photo)
    for layer, units in RENDERS:
        queue.request_render(MODEL, layer, units)
    return queue


def run_until_idle(settings: Settings, weights: Path) -> None:
    result = microscope("worker", "--data", str(settings.data_dir), "--weights", str(weights), "--device", "cpu",
                        "--until-idle", "--steps", "24", "--early-steps", "24", "--size", "48")
    assert result.returncode == 0, result.stderr


def kill_while(queue: JobQueue, settings: Settings, weights: Path, prefix: str, rng: random.Random) -> bool:
    """Start a worker and SIGKILL it while a job whose key starts with ``prefix`` is in flight."""
    process = start_worker(settings.data_dir, weights)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if any(key.startswith(prefix) for key in queue.claimed()):
                time.sleep(rng.uniform(0, 0.3))
                if any(key.startswith(prefix) for key in queue.claimed()):
                    process.send_signal(signal.SIGKILL)
                    process.wait()
                    return True
            time.sleep(0.01)
        return False
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.slow
def test_a_killed_worker_restarted_completes_every_job_once(web_settings: Settings, weights_dir: Path,
                                                            images_dir: Path, tmp_path: Path) -> None:
    seed = int(time.time())
    rng = random.Random(seed)
    photo = jpeg(images_dir, 5)
    clean = copy_store(web_settings, tmp_path / "clean")
    queue_jobs(clean, photo)
    run_until_idle(clean, weights_dir)

    killed = copy_store(web_settings, tmp_path / "killed")
    queue = queue_jobs(killed, photo)
    assert kill_while(queue, killed, weights_dir, "probe:", rng), "no kill landed mid-probe"
    assert kill_while(queue, killed, weights_dir, "render:", rng), "no kill landed mid-render"
    assert kill_while(queue, killed, weights_dir, "render:", rng), "no kill landed mid-render"
    run_until_idle(killed, weights_dir)
    assert microscope("gc", "--data", str(killed.data_dir)).returncode == 0
    assert microscope("gc", "--data", str(clean.data_dir)).returncode == 0

    assert queue.pending_count("inceptionv1") == 0 and not queue.claimed()
    for layer, units in RENDERS:
        assert queue.state(JobQueue.render_key(MODEL, layer, units)).state == "none"
    expected, actual = contents(clean), contents(killed)
    assert len(expected["probes"]) == 1 and len(expected["probe_units"]) == 96
    for table in expected:
        assert actual[table] == expected[table], f"seed {seed}: {table} differs"
    assert actual["blobs"] == actual["referenced"], f"seed {seed}: orphan or missing blobs"
