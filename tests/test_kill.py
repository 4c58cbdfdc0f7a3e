"""Every precompute stage survives SIGKILL at random moments: rerun, it ends exactly as a clean run.

Each stage is killed three times at a random moment of its run, then run to
completion, then ``microscope gc`` removes what the killed runs wrote but
never committed. The store must equal a clean run's: the same rows, every
blob present, no orphan blob.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.core.settings import Settings
from tests.conftest import ROOT
from tests.support.contents import contents
from tests.support.cli import microscope
from tests.support.tiny_model import FACTORY, synthetic_images

KILLS = 3


def stages(sample: Path, weights: Path) -> list[list[str]]:
    """The stages on the tiny model (tests/support/tiny_model.py): kills land in its work, not only in torch's import."""
    common = ["--model", FACTORY, "--weights", str(weights)]
    return [
        ["precompute", "catalog", *common],
        ["precompute", "examples", "--layers", "stem_0,mixed,mixed_branch2_2_0,res1,fc", "-k", "4", "--batch", "2",
         "--checkpoint-every", "1", "--images", str(sample), *common],
        ["precompute", "circuits", "--layers", "all", *common],
        ["precompute", "vis", "--layers", "mixed,res1", "--units", "0:6", "--steps", "40", "--size", "48", "--batch", "2",
         *common],
        ["precompute", "tuning", "--layers", "stem_0,mixed,res1,res2", "--batch", "8", "--images", str(sample), *common],
        ["precompute", "factors", "--layers", "mixed,res1", "--method", "nmf", "--groups", "4", "--samples", "3000",
         "--images", str(sample), *common],
        ["precompute", "factors", "--layers", "mixed", "--method", "sae", "--expansion", "2", "--steps", "1200",
         "--samples", "3000", "--images", str(sample), *common],
    ]


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    return synthetic_images(tmp_path / "sample", 60, seed=1)


def test_killed_stages_rerun_to_a_clean_runs_store(sample: Path, tiny_weights: Path, tmp_path: Path) -> None:
    seed = int(os.environ.get("MICROSCOPE_KILL_SEED") or time.time())
    rng = random.Random(seed)
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    durations = []
    for stage in stages(sample, tiny_weights):
        started = time.monotonic()
        result = microscope(*stage, "--data", str(clean))
        assert result.returncode == 0, result.stderr
        durations.append(time.monotonic() - started)

    kills = 0
    for stage, duration in zip(stages(sample, tiny_weights), durations):
        for _ in range(KILLS):
            process = subprocess.Popen([sys.executable, "-m", "precompute.cli", *stage, "--data", str(killed)],
                                       env={**os.environ, "PYTHONPATH": str(ROOT)},
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.2, duration))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
            process.wait()
        result = microscope(*stage, "--data", str(killed))
        assert result.returncode == 0, (seed, stage, result.stderr)
    assert microscope("gc", "--data", str(killed), "--grace", "0").returncode == 0

    expected, actual = contents(Settings.load(clean)), contents(Settings.load(killed))
    assert kills >= KILLS, f"seed {seed}: only {kills} kills landed mid-run"
    for table in expected:
        assert actual[table] == expected[table], f"seed {seed}: {table} differs"
    assert actual["blobs"] == actual["referenced"], f"seed {seed}: orphan or missing blobs"
    print(f"kill test: seed {seed}, {kills} kills landed mid-run")
