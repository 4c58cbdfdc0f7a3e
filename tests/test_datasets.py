"""Image sources: WebDataset tar shards read like folders (same examples, labels from .cls), damaged ones
reported without stopping the pass."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch
from sqlalchemy import select

from app.errors import DatasetError
from app.settings import Settings
from app.store import DatasetExample, DatasetImage, Layer, Store, Unit
from precompute.catalog import catalog
from precompute.examples import ExamplesConfig, run_examples
from precompute.images import list_images


def pack(folder: Path, target: Path, per_shard: int, classes: bool = True) -> Path:
    """``folder``'s images as WebDataset shards in ``target``: ``key.jpg`` and ``key.cls`` members, in listing order."""
    target.mkdir(parents=True)
    files = sorted(path for path in folder.rglob("*.jpg"))
    for start in range(0, len(files), per_shard):
        with tarfile.open(target / f"shard-{start // per_shard:06d}.tar", "w") as tar:
            for number, path in enumerate(files[start:start + per_shard], start):
                key = path.relative_to(folder).with_suffix("").as_posix()
                members = [(f"{key}.jpg", path.read_bytes())] + ([(f"{key}.cls", str(number % 7).encode())] if classes else [])
                for name, data in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return target


def _examples(settings: Settings) -> list[tuple]:
    """Every example by unit and rank, with its image's content digest in place of its path."""
    with Store.open(settings, readonly=True) as store, store.session() as session:
        query = (
            select(Layer.name, Unit.index, DatasetExample.kind, DatasetExample.rank, DatasetImage.sha256,
                   DatasetExample.activation, DatasetExample.y, DatasetExample.x, DatasetExample.crop_key)
            .join(Unit, DatasetExample.unit_id == Unit.id).join(Layer, Unit.layer_id == Layer.id)
            .join(DatasetImage, DatasetExample.image_id == DatasetImage.id)
        )
        return sorted(tuple(row) for row in session.execute(query))


def _run(tiny_net, source: Path, data: Path):  # noqa: ANN001, ANN202
    spec = tiny_net.spec
    with Store.open(Settings.load(data), create=True) as store:
        catalog(store, spec)
        config = ExamplesConfig(layers=tuple(spec.layers), k=4, batch_size=8)
        return run_examples(store, spec, tiny_net, "w", source, config, torch.device("cpu"), progress=False)


def test_shards_give_the_examples_the_folder_gives(tiny_net, tiny_images: Path, tmp_path: Path) -> None:  # noqa: ANN001
    shards = pack(tiny_images, tmp_path / "shards", per_shard=8)
    assert len(list(shards.glob("*.tar"))) == 3
    folder, packed = _run(tiny_net, tiny_images, tmp_path / "a"), _run(tiny_net, shards, tmp_path / "b")
    assert packed.images == folder.images == 20 and not packed.skipped
    expected = _examples(Settings.load(tmp_path / "a"))
    assert len(expected) > 1000 and _examples(Settings.load(tmp_path / "b")) == expected


def test_shard_members_are_listed_in_order_with_their_labels_and_bytes(tiny_images: Path, tmp_path: Path) -> None:
    shards = pack(tiny_images, tmp_path / "shards", per_shard=8)
    originals = sorted(tiny_images.rglob("*.jpg"))
    listed = list_images(shards)
    assert [file.path for file in listed[:2]] == [f"shard-000000.tar/{p.relative_to(tiny_images).as_posix()}" for p in originals[:2]]
    assert [file.label for file in listed] == [number % 7 for number in range(20)]
    assert [file.read_bytes() for file in listed] == [path.read_bytes() for path in originals]
    one = list_images(shards / "shard-000002.tar")  # a single shard is a source too
    assert [file.read_bytes() for file in one] == [path.read_bytes() for path in originals[16:]]
    assert one[0].path == originals[16].relative_to(tiny_images).as_posix()


def test_a_corrupt_member_is_skipped_and_a_damaged_shard_keeps_what_precedes(tiny_net, tiny_images: Path,  # noqa: ANN001
                                                                            tmp_path: Path) -> None:
    shards = pack(tiny_images, tmp_path / "shards", per_shard=10, classes=False)
    with tarfile.open(shards / "shard-000002.tar", "w") as tar:  # a JPEG that is not one
        info = tarfile.TarInfo("junk/broken.jpg")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    second = shards / "shard-000001.tar"
    second.write_bytes(second.read_bytes()[:len(second.read_bytes()) // 2] + b"\x01" * 1024)  # cut mid-member
    with pytest.warns(UserWarning, match="shard-000001.tar: damaged after"):
        listed = list_images(shards)
    assert 10 < len(listed) < 21
    with pytest.warns(UserWarning):
        result = _run(tiny_net, shards, tmp_path / "store")
    assert any("junk/broken.jpg" in failure for failure in result.skipped)
    assert result.examples > 0

    (tmp_path / "not-a-tar.tar").write_bytes(b"\x00" * 10 + b"plain text, not a tar" * 40)
    with pytest.raises(DatasetError, match="not a readable tar shard"):
        list_images(tmp_path / "not-a-tar.tar")
