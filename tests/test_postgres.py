"""PostgreSQL as the store's database: two shards fill one store concurrently, the server reads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from app import urls
from app.main import create_app
from app.core.settings import Settings
from tests.conftest import ROOT, link_sample
from tests.support.contents import contents
from tests.support.cli import microscope

CIRCUITS = "conv2d1,conv2d2,mixed3a,mixed3a_3x3,mixed3a_pool_reduce,softmax2"
STAGES = [
    ["precompute", "catalog"],
    ["precompute", "circuits", "--layers", CIRCUITS],
    ["precompute", "examples", "--layers", "conv2d2,mixed3a", "-k", "3", "--batch", "4"],
    ["precompute", "vis", "--layers", "mixed3a", "--units", "0:4", "--steps", "2", "--size", "32", "--batch", "2"],
]


@pytest.fixture
def sample(images_dir: Path, tmp_path: Path) -> Path:
    return link_sample(images_dir, tmp_path / "sample", step=60, count=16)


def test_two_shards_fill_one_postgres_store_like_one_process(
    postgres_url: str, sample: Path, weights_dir: Path, tmp_path: Path
) -> None:
    common = ["--weights", str(weights_dir)]
    alone = tmp_path / "alone"
    for stage in STAGES:
        extra = ["--images", str(sample)] if "examples" in stage else []
        result = microscope(*stage, *extra, *(common if stage[1] != "catalog" else []), "--data", str(alone))
        assert result.returncode == 0, result.stderr

    shared = tmp_path / "shared"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MICROSCOPE_DATABASE_URL": postgres_url}
    for stage in STAGES:
        extra = ["--images", str(sample)] if "examples" in stage else []
        processes = [
            subprocess.Popen(
                [sys.executable, "-m", "precompute.cli", *stage, *extra, *(common if stage[1] != "catalog" else []),
                 "--data", str(shared), "--shard", f"{index}/2"],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )
            for index in range(2)
        ]
        for process in processes:
            out, err = process.communicate(timeout=600)
            assert process.returncode == 0, err

    one = contents(Settings.load(alone))
    two = contents(Settings.load(shared, postgres_url))
    assert len(two["units"]) == 13768 and two["units"] == one["units"]
    assert len(two["edges"]) > 1000 and two["edges"] == one["edges"]
    assert len(two["examples"]) == (192 + 256) * 3 * 2 and two["examples"] == one["examples"]
    assert len(two["artifacts"]) == 4 and two["artifacts"] == one["artifacts"]
    assert two["stats"] == one["stats"] and two["images"] == one["images"]
    assert set(two["referenced"]) <= set(two["blobs"])


def test_the_server_reads_a_postgres_store(postgres_url: str, tmp_path: Path) -> None:
    settings = Settings.load(tmp_path / "store", postgres_url)
    assert microscope("precompute", "catalog", "--data", str(settings.data_dir),
                      env={"MICROSCOPE_DATABASE_URL": postgres_url}).returncode == 0
    with TestClient(create_app(settings)) as client:
        unit = client.get(urls.unit("inceptionv1_caffe", "softmax2", 488, json=True))
        assert unit.status_code == 200 and unit.json()["unit"]["label"] == "chain"
        assert client.get(urls.search("goldfish")).url.path == urls.unit("inceptionv1_caffe", "softmax2", 1)
        with client.app.state.microscope.engine.connect() as connection, pytest.raises(Exception, match="read-only"):
            connection.exec_driver_sql("DELETE FROM units")
