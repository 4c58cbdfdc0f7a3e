"""The examples stage: exact top-k, resumable after SIGKILL, robust to bad images."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute

from app.core.settings import Settings
from app.core.store import Dataset, DatasetExample, DatasetImage, Layer, Store, Unit, UnitStats
from app.core.zoo import ModelSpec
from precompute.stages.catalog import catalog
from precompute.stages.examples import ExamplesConfig, input_transform, run_examples
from precompute.running.images import read_rgb
from precompute.running.context import Stage
from tests.conftest import ROOT, link_sample
from tests.support.cli import microscope
from tests.support.contents import stored_examples

LAYERS = "conv2d1,mixed3a_3x3,mixed3a,mixed3b"


@pytest.fixture
def sample(images_dir: Path, tmp_path: Path) -> Path:
    """48 of the shared images, linked (not copied) into a folder of their own."""
    return link_sample(images_dir, tmp_path / "sample", step=20, count=48)


def test_top_examples_are_the_true_maxima(store: Store, spec: ModelSpec, net, sample: Path) -> None:  # noqa: ANN001
    catalog(store, spec)
    config = ExamplesConfig(layers=(spec.layer("mixed3a"),), k=5, batch_size=7)
    result = run_examples(Stage(store, net, "w", torch.device("cpu"), progress=False), sample, config)
    assert result.examples == 256 * 5 * 2 and not result.skipped
    files = sorted(sample.glob("*/*.jpg"))
    images = torch.stack([input_transform(spec)(read_rgb(path)) for path in files])
    with torch.no_grad():
        acts = net(images.contiguous(memory_format=torch.channels_last), ["mixed3a"])["mixed3a"]
    unit = 17
    per_image = acts[:, unit].flatten(1)
    best = per_image.max(dim=1).values.topk(5)
    with store.session() as session:
        rows = session.execute(
            select(DatasetExample.activation, DatasetImage.path, DatasetExample.y, DatasetExample.x)
            .join(Unit).join(Layer).join(DatasetImage, DatasetExample.image_id == DatasetImage.id)
            .where(Layer.name == "mixed3a", Unit.index == unit, DatasetExample.kind == "top")
            .order_by(DatasetExample.rank)
        ).all()
        stats = session.scalar(select(UnitStats).join(Unit).join(Layer).where(Layer.name == "mixed3a", Unit.index == unit))
    assert [row.activation for row in rows] == pytest.approx(best.values.tolist(), rel=1e-4)
    assert [row.path for row in rows] == [files[i].relative_to(sample).as_posix() for i in best.indices.tolist()]
    first = int(best.indices[0])
    position = int(per_image[first].argmax())
    assert (rows[0].y, rows[0].x) == divmod(position, 28)
    assert sum(stats.histogram) == 48 and stats.images == 48
    assert stats.active_fraction == pytest.approx(float((per_image.max(dim=1).values > 0).float().mean()), abs=1e-4)


def test_killed_midway_and_rerun_equals_an_uninterrupted_pass(sample: Path, weights_dir: Path, tmp_path: Path) -> None:
    args = ["precompute", "examples", "--layers", LAYERS, "--images", str(sample), "--batch", "4",
            "--checkpoint-every", "1", "-k", "6", "--weights", str(weights_dir)]
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    for data in (clean, killed):
        assert microscope("precompute", "catalog", "--data", str(data)).returncode == 0
    assert microscope(*args, "--data", str(clean)).returncode == 0

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "precompute.cli", *args, "--data", str(killed)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = killed / "checkpoints"
    deadline = time.monotonic() + 300
    while not any(checkpoints.glob("examples-*.pt")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    saved = torch.load(next(checkpoints.glob("examples-*.pt")), weights_only=True)
    assert 0 < saved["next_image"] < 48, "the kill must land mid-way"
    with Store.open(Settings.load(killed), readonly=True) as store, store.session() as session:
        assert session.scalar(select(func.count()).select_from(DatasetExample)) == 0

    rerun = microscope(*args, "--data", str(killed))
    assert rerun.returncode == 0, rerun.stderr
    assert stored_examples(Settings.load(killed)) == stored_examples(Settings.load(clean))
    assert not any(checkpoints.glob("examples-*.pt"))
    again = microscope(*args, "--data", str(killed))
    assert "already computed" in again.stdout


def test_unreadable_images_are_skipped_and_listed(store: Store, spec: ModelSpec, net, sample: Path) -> None:  # noqa: ANN001
    catalog(store, spec)
    (sample / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (sample / "empty.png").write_bytes(b"")
    config = ExamplesConfig(layers=(spec.layer("conv2d1"),), k=3, batch_size=16)
    result = run_examples(Stage(store, net, "w", torch.device("cpu"), progress=False), sample, config)
    assert sorted(Path(failure.split(":")[0]).name for failure in result.skipped) == ["broken.jpg", "empty.png"]
    assert result.examples == 64 * 3 * 2
    with store.session() as session:
        dataset = session.scalar(select(Dataset))
        assert dataset.images == 50
        keys = session.scalars(select(DatasetExample.crop_key)).all()
        thumbs = session.scalars(select(DatasetImage.thumbnail_key)).all()
    assert all(store.blobs.has(key) for key in [*keys, *thumbs])


def test_tiny_and_extreme_images_get_examples_and_exact_crops(store: Store, spec: ModelSpec, net, tmp_path: Path) -> None:  # noqa: ANN001
    """A 3x3 PNG, a 1x1 JPEG and an 80:1 strip: no crash, a non-empty crop for every example."""
    from PIL import Image

    from app.core.zoo.spec import Framing

    folder = tmp_path / "odd"
    folder.mkdir()
    Image.new("RGB", (3, 3), (200, 30, 30)).save(folder / "tiny.png")
    Image.new("RGB", (1, 1), (10, 200, 10)).save(folder / "dot.jpg")
    strip = Image.linear_gradient("L").resize((1600, 20)).convert("RGB")
    strip.save(folder / "strip.jpg")
    catalog(store, spec)
    config = ExamplesConfig(layers=(spec.layer("conv2d1"), spec.layer("mixed3a")), k=3, batch_size=2)
    result = run_examples(Stage(store, net, "w", torch.device("cpu"), progress=False), folder, config)
    assert not result.skipped and result.examples == (64 + 256) * 3 * 2
    with store.session() as session:
        rows = session.execute(
            select(DatasetImage.path, DatasetImage.width, DatasetImage.height, DatasetExample.y, DatasetExample.x,
                   DatasetExample.crop_key, Layer.name, Unit.index)
            .join(DatasetImage, DatasetExample.image_id == DatasetImage.id).join(Unit).join(Layer)
        ).all()
    for path, width, height, y, x, key, layer, unit in rows:
        with Image.open(store.blobs.path(key)) as crop:
            assert crop.width >= 1 and crop.height >= 1
        if path == "strip.jpg":  # the centre square of a 1600x20 strip: columns 790..810
            box = Framing.of(width, height).to_original(
                spec.field_layer(spec.layer(layer), unit).position_box(y, x, 224), 224)
            assert 790 <= box[0] < box[2] <= 810 and 0 <= box[1] < box[3] <= 20


def test_a_block_units_field_is_its_branchs() -> None:
    from app.core.zoo import get_model

    spec = get_model("inceptionv1_caffe")
    block = spec.layer("mixed4a")
    assert spec.field_layer(block, 0).name == "mixed4a_1x1"
    assert spec.field_layer(block, 192).name == "mixed4a_3x3"
    assert spec.field_layer(block, 192 + 208).name == "mixed4a_5x5"
    assert spec.field_layer(block, 511).name == "mixed4a_pool_reduce"
    one, three, five, pool = (spec.field_layer(block, unit).receptive_field for unit in (0, 192, 400, 511))
    assert one < three == pool < five == block.receptive_field


def test_examples_are_framed_not_squashed(spec: ModelSpec) -> None:
    """A wide image keeps its proportions: the network sees its centre square."""
    from PIL import Image

    wide = Image.new("RGB", (400, 200), (255, 0, 0))
    wide.paste((0, 0, 255), (100, 0, 300, 200))  # blue centre square, red sides
    seen = input_transform(spec)(wide)
    assert seen.shape == (3, 224, 224)
    assert float(seen[2].min()) > 0.95 and float(seen[0].max()) < 0.05


def test_a_moved_dataset_is_reported_and_kept(store: Store, spec: ModelSpec, net, sample: Path, tmp_path: Path) -> None:  # noqa: ANN001
    catalog(store, spec)
    config = ExamplesConfig(layers=(spec.layer("conv2d1"),), k=2, batch_size=16)
    run_examples(Stage(store, net, "w", torch.device("cpu"), progress=False), sample, config)
    moved = tmp_path / "elsewhere" / "sample"
    moved.parent.mkdir()
    sample.rename(moved)
    result = run_examples(Stage(store, net, "w", torch.device("cpu"), progress=False), moved, config)
    assert result.reused and "moved" in result.messages[0]
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(DatasetExample)) == 64 * 2 * 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["-k", "0"], "-k must be at least 1"), (["--layers", "mixed9z"], "has no layer 'mixed9z'")],
)
def test_bad_arguments_write_nothing(extra: list[str], message: str, sample: Path, tmp_path: Path) -> None:
    data = tmp_path / "store"
    assert microscope("precompute", "catalog", "--data", str(data)).returncode == 0
    before = sorted(path.name for path in data.rglob("*"))
    result = microscope("precompute", "examples", "--images", str(sample), "--data", str(data), *extra)
    assert result.returncode == 2 and message in result.stderr
    assert sorted(path.name for path in data.rglob("*")) == before


def test_examples_need_a_catalog(sample: Path, tmp_path: Path) -> None:
    result = microscope("precompute", "examples", "--images", str(sample), "--data", str(tmp_path / "none"))
    assert result.returncode == 2 and "run `microscope precompute catalog` first" in result.stderr
    assert not (tmp_path / "none").exists()
