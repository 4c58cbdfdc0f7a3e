"""Fixtures: the real shared weights and images (by path, never copied), and fresh stores."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.settings import Settings
from app.core.store import Store
from app.core.zoo import ModelSpec, get_model

ROOT = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that read ../shared (the real BVLC weights or the ImageNet sample) are marked ``shared``:
    ``pytest -m "not shared"`` runs the rest, on the tiny model and synthetic images."""
    for item in items:
        if "shared_dir" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.shared)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the checkout, or MICROSCOPE_SHARED; its absence is a failure, not a skip."""
    shared = Path(os.environ.get("MICROSCOPE_SHARED") or ROOT.parent / "shared")
    assert (shared / "models/bvlc_googlenet").is_dir(), f"shared weights and data not found at {shared}"
    return shared


@pytest.fixture(scope="session")
def weights_dir(shared_dir: Path) -> Path:
    return shared_dir / "models/bvlc_googlenet"


@pytest.fixture(scope="session")
def images_dir(shared_dir: Path) -> Path:
    return shared_dir / "data/imagenet-sample"


@pytest.fixture(scope="session")
def spec() -> ModelSpec:
    return get_model("inceptionv1_caffe")


@pytest.fixture(scope="session")
def net(spec: ModelSpec, weights_dir: Path):  # noqa: ANN201 - torch type kept out of annotations
    from precompute.models.bvlc import load_network

    return load_network(spec, weights_dir)[0]


@pytest.fixture(scope="session")
def web_settings(tmp_path_factory: pytest.TempPathFactory, spec: ModelSpec, net, images_dir: Path) -> Settings:  # noqa: ANN001
    """One small real store for every web, HTTP and browser test; servers open it read-only."""
    from tests.support.web_store import build

    return build(tmp_path_factory.mktemp("web"), spec, net, images_dir)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeded weights of the tiny model (tests/support/tiny_model.py) as a state dict."""
    from tests.support.tiny_model import write_weights

    path = tmp_path_factory.mktemp("tiny-weights") / "tiny.pt"
    write_weights(path)
    return path


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tiny_model import synthetic_images

    return synthetic_images(tmp_path_factory.mktemp("tiny-images"), 20)


@pytest.fixture(scope="session")
def tiny_settings(tmp_path_factory: pytest.TempPathFactory, tiny_weights: Path, tiny_images: Path) -> Settings:
    """A store of the tiny model made by `microscope precompute all` (every stage), once per session."""
    import subprocess
    import sys

    from tests.support.tiny_model import FACTORY

    root = tmp_path_factory.mktemp("tiny-store")
    result = subprocess.run(
        [sys.executable, "-m", "precompute.cli", "precompute", "all", "--model", FACTORY, "--weights", str(tiny_weights),
         "--images", str(tiny_images), "--data", str(root), "--steps", "4", "--early-steps", "4", "--size", "48",
         "--batch", "8", "--device", "cpu"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "catalog: 16 layers, 1152 units added" in result.stdout
    return Settings.load(root)


@pytest.fixture(scope="session")
def tiny_net(tiny_weights: Path):  # noqa: ANN201 - torch type kept out of annotations
    from precompute.models import load

    return load("tests.support.tiny_model:tiny", tiny_weights).net


@pytest.fixture(scope="session")
def tiny_unrendered(tmp_path_factory: pytest.TempPathFactory, tiny_net, tiny_images: Path) -> Settings:  # noqa: ANN001
    """A store of the tiny model with catalog, examples and circuits but no image: what the live side fills."""
    import torch

    from precompute.stages.catalog import catalog
    from precompute.stages.circuits import run_circuits
    from precompute.stages.examples import ExamplesConfig, run_examples
    from precompute.running.context import Stage

    settings = Settings.load(tmp_path_factory.mktemp("tiny-unrendered"))
    spec, cpu = tiny_net.spec, torch.device("cpu")
    with Store.open(settings, create=True) as store:
        catalog(store, spec)
        run_examples(Stage(store, tiny_net, "w", cpu, progress=False), tiny_images, ExamplesConfig(layers=tuple(spec.layers), k=4, batch_size=8))
        run_circuits(Stage(store, tiny_net, "w", torch.device("cpu"), progress=False), spec.layers)
    return settings


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A local S3-compatible server (moto's server mode) for the session."""
    from tests.support.s3 import s3_server

    with s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def s3_blobs(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket's URL, with the environment that reaches it set for this test (and its subprocesses)."""
    from tests.support.s3 import CREDENTIALS, new_bucket

    for name, value in {**CREDENTIALS, "AWS_ENDPOINT_URL": s3_endpoint}.items():
        monkeypatch.setenv(name, value)
    return new_bucket(s3_endpoint)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.load(tmp_path / "store")


@pytest.fixture
def store(settings: Settings):  # noqa: ANN201
    with Store.open(settings, create=True) as opened:
        yield opened


@pytest.fixture(scope="session")
def postgres_base() -> Iterator[str]:
    from tests.support.postgres import postgres_server

    with postgres_server() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_base: str) -> str:
    from tests.support.postgres import new_database

    return new_database(postgres_base)


def link_sample(images: Path, folder: Path, step: int, count: int) -> Path:
    """Every ``step``-th shared image, ``count`` of them, linked (never copied) into ``folder``."""
    for source in sorted(images.glob("*/*.jpg"))[::step][:count]:
        (folder / source.parent.name).mkdir(parents=True, exist_ok=True)
        (folder / source.parent.name / source.name).symlink_to(source)
    return folder


@pytest.fixture
def live(tiny_unrendered: Settings, tmp_path: Path) -> Settings:
    """A tiny model's store (tests/support/tiny_model.py) with examples and circuits and no image yet."""
    from tests.support.live import copy_store

    return copy_store(tiny_unrendered, tmp_path / "live")
