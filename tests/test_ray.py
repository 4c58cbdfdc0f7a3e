"""``--ray``: the stages' shards as tasks on a local Ray cluster equal one process's store, row for row,
also when a task is killed mid-run; an input error in a task fails the run with its message."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.settings import Settings
from tests.conftest import ROOT
from tests.support.contents import contents
from tests.support.ray_cluster import TaskKiller, ray_cluster
from tests.support.tiny_model import FACTORY, synthetic_images

#: The tiny store's `precompute all` (conftest's ``tiny_settings``), without its --data.
TINY_ALL = ["--steps", "4", "--early-steps", "4", "--size", "48", "--batch", "8", "--device", "cpu"]


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    with ray_cluster(cpus=2) as address:
        yield address


def precompute(*args: str, model: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "precompute.cli", "precompute", *args, *model],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_precompute_all_on_ray_equals_one_process(ray_address: str, tiny_settings: Settings, tiny_weights: Path,
                                                  tiny_images: Path, tmp_path: Path) -> None:
    model = ("--model", FACTORY, "--weights", str(tiny_weights))
    result = precompute("all", "--images", str(tiny_images), "--data", str(tmp_path / "ray"), *TINY_ALL,
                        "--ray", ray_address, model=model)
    assert result.returncode == 0, result.stderr[-3000:]
    # Two tasks per stage ran in worker processes, their progress drawn by the driver.
    workers = set(re.findall(r"\(pid=(\d+)\)", result.stdout + result.stderr))
    assert len(workers) >= 2, result.stdout[-2000:]
    assert "circuits: 17912 edges written" in result.stdout
    assert contents(Settings.load(tmp_path / "ray")) == contents(tiny_settings)


@pytest.fixture(scope="module")
def many_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Enough synthetic images that an examples task runs for a few seconds."""
    return synthetic_images(tmp_path_factory.mktemp("many") / "images", 200)


@pytest.mark.parametrize("stage", ["examples", "circuits"])
def test_a_task_killed_mid_run_is_retried_and_the_store_equals_one_process(
    stage: str, ray_address: str, tiny_weights: Path, many_images: Path, tmp_path: Path
) -> None:
    model = ("--model", FACTORY, "--weights", str(tiny_weights))
    work = ["--images", str(many_images), "--batch", "4", "--checkpoint-every", "2", "--device", "cpu"] \
        if stage == "examples" else []
    one, killed = tmp_path / "one", tmp_path / "killed"
    for data in (one, killed):
        assert precompute("catalog", "--data", str(data), model=model).returncode == 0
    assert precompute(stage, *work, "--data", str(one), model=model).returncode == 0

    killer = TaskKiller(seed=len(stage))
    killer.start()
    result = precompute(stage, *work, "--data", str(killed), "--ray", ray_address, model=model)
    killer.done.set()
    assert killer.killed is not None, "no task was seen running"
    assert result.returncode == 0, result.stderr[-3000:]
    expected, actual = contents(Settings.load(one)), contents(Settings.load(killed))
    assert len(actual["edges" if stage == "circuits" else "examples"]) > 1000
    assert actual == expected


def test_an_input_error_in_a_task_fails_the_run_with_its_message(ray_address: str, tiny_weights: Path,
                                                                 tmp_path: Path) -> None:
    model = ("--model", FACTORY, "--weights", str(tiny_weights))
    data = tmp_path / "store"
    assert precompute("catalog", "--data", str(data), model=model).returncode == 0
    before = contents(Settings.load(data))
    result = precompute("examples", "--images", str(tmp_path / "missing"), "--data", str(data), "--ray", ray_address,
                        model=model)
    assert result.returncode != 0
    assert f"examples task: image folder {tmp_path / 'missing'} does not exist" in result.stderr
    assert "Traceback" not in result.stderr
    assert contents(Settings.load(data)) == before
