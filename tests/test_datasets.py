"""Image sources: WebDataset tar shards read like folders (same examples, labels from .cls), damaged ones
reported without stopping the pass; the default sample downloaded once, checked file by file."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch

from app.core.errors import DatasetError
from app.core.settings import Settings
from app.core.store import DatasetImage, Store
from app.core.zoo import get_model
from precompute.stages.catalog import catalog
from precompute.running import images
from precompute.stages.examples import ExamplesConfig, run_examples
from precompute.running.images import list_images
from precompute.running.context import Stage
from tests.support.serving import serve_folder
from tests.support.contents import stored_examples


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


def _run(tiny_net, source: Path, data: Path):  # noqa: ANN001, ANN202
    spec = tiny_net.spec
    with Store.open(Settings.load(data), create=True) as store:
        catalog(store, spec)
        config = ExamplesConfig(layers=tuple(spec.layers), k=4, batch_size=8)
        return run_examples(Stage(store, tiny_net, "w", torch.device("cpu"), progress=False), source, config)


def test_shards_give_the_examples_the_folder_gives(tiny_net, tiny_images: Path, tmp_path: Path) -> None:  # noqa: ANN001
    shards = pack(tiny_images, tmp_path / "shards", per_shard=8)
    assert len(list(shards.glob("*.tar"))) == 3
    folder, packed = _run(tiny_net, tiny_images, tmp_path / "a"), _run(tiny_net, shards, tmp_path / "b")
    assert packed.images == folder.images == 20 and not packed.skipped
    expected = sorted(stored_examples(Settings.load(tmp_path / "a"), DatasetImage.sha256))
    assert len(expected) > 1000 and sorted(stored_examples(Settings.load(tmp_path / "b"), DatasetImage.sha256)) == expected


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


@pytest.fixture
def no_shared_images(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A checkout without ../shared beside it, as a user's clone is."""
    monkeypatch.setattr(images, "SHARED_IMAGES", tmp_path / "no-shared")
    monkeypatch.delenv("MICROSCOPE_IMAGES_URL", raising=False)


def _mirror(images_dir: Path, target: Path) -> Path:
    """A mirror of the shared sample (links), as a web server would hold it."""
    for source in images_dir.rglob("*.jpg"):
        (target / source.parent.name).mkdir(parents=True, exist_ok=True)
        (target / source.parent.name / source.name).symlink_to(source)
    return target


def test_the_default_images_download_once_checked(no_shared_images: None, images_dir: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with serve_folder(_mirror(images_dir, tmp_path / "mirror")) as url:
        monkeypatch.setenv("MICROSCOPE_IMAGES_URL", url)
        folder = images.locate_images(None, cache=tmp_path / "cache")
    assert folder == tmp_path / "cache/imagenet-sample"
    listed = list_images(folder)
    assert len(listed) == 1000
    assert listed[0].read_bytes() == (images_dir / listed[0].path).read_bytes()
    stamp = listed[0].full_path.stat().st_mtime_ns
    # Once there and checked, nothing is fetched again (the server is gone).
    assert images.locate_images(None, cache=tmp_path / "cache") == folder
    assert listed[0].full_path.stat().st_mtime_ns == stamp


def test_a_corrupt_download_is_refused_and_not_kept(no_shared_images: None, images_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    mirror = _mirror(images_dir, tmp_path / "mirror")
    bad = mirror / "n01443537/n01443537_goldfish.jpg"
    bad.unlink()
    bad.write_bytes(b"\xff\xd8 not the goldfish")
    with serve_folder(mirror) as url:
        monkeypatch.setenv("MICROSCOPE_IMAGES_URL", url)
        with pytest.raises(DatasetError, match=r"n01443537_goldfish.jpg: sha256 \w+, expected"):
            images.locate_images(None, cache=tmp_path / "cache")
    assert not (tmp_path / "cache/imagenet-sample/n01443537/n01443537_goldfish.jpg").exists()
    assert not list((tmp_path / "cache/imagenet-sample/n01443537").glob("tmp*"))


def test_without_a_mirror_the_public_originals_download_into_class_folders(
        no_shared_images: None, images_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default source: the sample's originals, flat files pinned in app/core/zoo, laid out by synset."""
    from precompute.models.weight_files import Checksums, file_sha256

    pinned = Checksums.named(images.ORIGINALS_CHECKSUMS)
    assert len(pinned.files) == 1000 and "n01440764_tench.JPEG" in pinned.files
    assert images.ORIGINALS_URL.startswith("https://raw.githubusercontent.com/EliSchwartz/imagenet-sample-images/")
    flat = tmp_path / "public"
    flat.mkdir()
    files = {}
    for source in sorted(images_dir.glob("n0144*/*.jpg")):
        name = source.name.replace(".jpg", ".JPEG")
        (flat / name).write_bytes(source.read_bytes())
        files[name] = file_sha256(flat / name)
    manifest = Checksums(files=files, digest="test")
    with serve_folder(flat) as url:
        folder = images.fetch_originals(manifest, url, tmp_path / "cache")
    listed = list_images(folder, get_model("inceptionv1_caffe"))
    assert len(listed) == len(files) and all(image.label is not None for image in listed)
    assert listed[0].path.split("/")[0] == listed[0].path.split("/")[1].split("_")[0]
    monkeypatch.setattr(images, "ORIGINALS_URL", "http://127.0.0.1:9/")  # nothing listens: a clear error
    monkeypatch.delenv("MICROSCOPE_IMAGES_URL", raising=False)
    with pytest.raises(DatasetError, match="could not download .*the default images download from"):
        images.locate_images(None, cache=tmp_path / "cache2")
