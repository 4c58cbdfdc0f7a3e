"""The worker SIGKILLed mid-probe, mid-render, mid-attribution and mid-ablation, then restarted: every job
completes exactly once.

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

from app.core.jobs import JobQueue
from app.core.settings import Settings
from tests.support.contents import contents
from tests.support.live_processes import start_worker
from tests.support.cli import microscope
from tests.support.live import copy_store
from tests.support.tiny_model import FACTORY

MODEL = "tiny"
RENDERS = [("mixed", [10]), ("mixed", [11]), ("stem_0", [3]), ("res1", [4, 5, 6, 7])]
#: Renders long enough on the tiny model (tests/support/tiny_model.py) for a kill to land inside one.
WORKER_ARGS = ["--model", FACTORY, "--steps", "300", "--early-steps", "300", "--size", "64"]


def queue_jobs(settings: Settings, photo: bytes) -> JobQueue:
    import hashlib

    queue = JobQueue.for_store(settings)
    queue.request_probe(MODEL, hashlib.sha256(photo).hexdigest(), photo)
    for layer, units in RENDERS:
        queue.request_render(MODEL, layer, units)
    return queue


def queue_second(settings: Settings, labelled: Path) -> JobQueue:
    """After the probe: its top class's attribution maps on demand and an ablation over a labelled dataset."""
    from sqlalchemy import select, update

    from app.core.store import Dataset, Probe, Store

    with Store.open(settings) as store:
        with store.transaction() as session:
            session.execute(update(Dataset).values(root=str(labelled)))
        with store.session() as session:
            probe = session.scalars(select(Probe)).one()
            probe_id, second = probe.public_id, probe.classes[1]["index"]
    queue = JobQueue.for_store(settings)
    queue.request_probe_render(MODEL, probe_id, "fc", "attribution", second)
    queue.request_ablation(MODEL, "units:res1:1,2,3", "mean")
    return queue


def labelled_images(images: Path, target: Path, spec_classes: list[str], copies: int = 6) -> Path:
    """The synthetic images under real synsets, several times over (an ablation long enough to be killed in)."""
    import shutil

    for number, file in enumerate(sorted(images.glob("*/*.jpg"))):
        for copy in range(copies):
            folder = target / spec_classes[number % 5]
            folder.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, folder / f"{copy}-{file.name}")
    return target


def run_until_idle(settings: Settings, weights: Path) -> None:
    result = microscope("worker", "--data", str(settings.data_dir), "--weights", str(weights), "--device", "cpu",
                        "--until-idle", *WORKER_ARGS)
    assert result.returncode == 0, result.stderr


def kill_while(queue: JobQueue, settings: Settings, weights: Path, prefix: str, rng: random.Random) -> bool:
    """Start a worker and SIGKILL it while a job whose key starts with ``prefix`` is in flight."""
    process = start_worker(settings.data_dir, weights, *WORKER_ARGS)
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if any(key.startswith(prefix) for key in queue.claimed()):
                time.sleep(rng.uniform(0, 0.02))
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
def test_a_killed_worker_restarted_completes_every_job_once(tiny_settings: Settings, tiny_weights: Path,
                                                            tiny_images: Path, tmp_path: Path) -> None:
    seed = int(time.time())
    rng = random.Random(seed)
    photo = sorted(tiny_images.glob("*/*.jpg"))[5].read_bytes()
    from precompute.models import load

    synsets = [label.synset for label in load(FACTORY, tiny_weights).net.spec.classes]
    labelled = labelled_images(tiny_images, tmp_path / "labelled", synsets)
    clean = copy_store(tiny_settings, tmp_path / "clean")
    queue_jobs(clean, photo)
    run_until_idle(clean, tiny_weights)
    queue_second(clean, labelled)
    run_until_idle(clean, tiny_weights)

    killed = copy_store(tiny_settings, tmp_path / "killed")
    queue = queue_jobs(killed, photo)
    assert kill_while(queue, killed, tiny_weights, "probe:", rng), "no kill landed mid-probe"
    assert kill_while(queue, killed, tiny_weights, "render:", rng), "no kill landed mid-render"
    assert kill_while(queue, killed, tiny_weights, "render:", rng), "no kill landed mid-render"
    run_until_idle(killed, tiny_weights)
    queue_second(killed, labelled)
    assert kill_while(queue, killed, tiny_weights, "probe-render:", rng), "no kill landed mid-attribution"
    assert kill_while(queue, killed, tiny_weights, "ablate:", rng), "no kill landed mid-ablation"
    run_until_idle(killed, tiny_weights)
    assert microscope("gc", "--data", str(killed.data_dir), "--grace", "0").returncode == 0
    assert microscope("gc", "--data", str(clean.data_dir), "--grace", "0").returncode == 0

    assert queue.pending_count(MODEL) == 0 and not queue.claimed()
    for layer, units in RENDERS:
        assert queue.state(JobQueue.render_key(MODEL, layer, units)).state == "none"
    expected, actual = contents(clean), contents(killed)
    assert len(expected["probes"]) == 1 and len(expected["probe_units"]) > 0
    assert len(expected["probe_attributions"]) >= 6 and len(expected["ablations"]) == 1
    for table in expected:
        assert actual[table] == expected[table], f"seed {seed}: {table} differs"
    assert actual["blobs"] == actual["referenced"], f"seed {seed}: orphan or missing blobs"
