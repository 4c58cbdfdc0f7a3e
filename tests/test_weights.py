"""Weights: checked file by file, loaded right, downloaded once with checksums."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.core.errors import WeightsError
from app.core.zoo import ModelSpec
from precompute.models.weight_files import Checksums, download, locate, verify
from tests.support.serving import serve_folder


def _copy(weights_dir: Path, target: Path) -> Path:
    shutil.copytree(weights_dir / "weights", target / "weights")
    return target


def test_the_shared_weights_verify(weights_dir: Path, spec: ModelSpec) -> None:
    checksums = verify(weights_dir, spec)
    assert len(checksums.files) == 116
    assert checksums.digest == Checksums.of(spec).digest


def test_a_missing_file_is_named(weights_dir: Path, spec: ModelSpec, tmp_path: Path) -> None:
    folder = _copy(weights_dir, tmp_path)
    (folder / "weights/inception_4c/3x3_filter.bin").unlink()
    with pytest.raises(WeightsError, match=r"inception_4c/3x3_filter.bin: missing"):
        verify(folder, spec)


def test_a_wrong_size_is_named_with_the_expected_shape(weights_dir: Path, spec: ModelSpec, tmp_path: Path) -> None:
    folder = _copy(weights_dir, tmp_path)
    file = folder / "weights/conv2/3x3_bias.bin"
    file.write_bytes(file.read_bytes()[:-4])
    with pytest.raises(WeightsError, match=r"conv2/3x3_bias.bin: 764 bytes, expected 768 \(float32 \(192,\)\)"):
        verify(folder, spec)


def test_a_checksum_mismatch_is_named(weights_dir: Path, spec: ModelSpec, tmp_path: Path) -> None:
    folder = _copy(weights_dir, tmp_path)
    file = folder / "weights/conv1/7x7_s2_bias.bin"
    data = bytearray(file.read_bytes())
    data[0] ^= 1
    file.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"conv1/7x7_s2_bias.bin: sha256 [0-9a-f]{64}, expected f418a01f"):
        verify(folder, spec)


def test_a_folder_of_another_model_is_refused(spec: ModelSpec, tmp_path: Path) -> None:
    (tmp_path / "weights/conv1").mkdir(parents=True)
    (tmp_path / "weights/conv1/7x7_s2_filter.bin").write_bytes(b"\0" * 64)
    with pytest.raises(WeightsError, match="7x7_s2_filter.bin: 64 bytes, expected 37632"):
        verify(tmp_path, spec)


def test_locate_prefers_the_given_folder(spec: ModelSpec, tmp_path: Path) -> None:
    assert locate(spec, tmp_path) == tmp_path


@pytest.fixture
def weights_server(weights_dir: Path) -> Iterator[str]:
    with serve_folder(weights_dir) as url:
        yield url


def test_download_fetches_checks_and_reuses(weights_server: str, spec: ModelSpec, tmp_path: Path) -> None:
    folder = download(spec, tmp_path / "cache", base_url=weights_server)
    assert verify(folder, spec).digest == Checksums.of(spec).digest
    stamp = (folder / "weights/conv1/7x7_s2_filter.bin").stat().st_mtime_ns
    assert download(spec, tmp_path / "cache", base_url=weights_server) == folder
    assert (folder / "weights/conv1/7x7_s2_filter.bin").stat().st_mtime_ns == stamp


def test_download_refuses_a_corrupt_file_and_keeps_nothing_of_it(
    weights_dir: Path, spec: ModelSpec, tmp_path: Path
) -> None:
    mirror = _copy(weights_dir, tmp_path / "mirror")
    (mirror / "weights/conv2/3x3_bias.bin").write_bytes(b"\0" * 768)
    with serve_folder(mirror) as url, pytest.raises(WeightsError, match=r"conv2/3x3_bias.bin: sha256 .* expected 93037ad5"):
        download(spec, tmp_path / "cache", base_url=url)
    assert not (tmp_path / "cache/inceptionv1_caffe/weights/conv2/3x3_bias.bin").exists()
    assert not list((tmp_path / "cache/inceptionv1_caffe/weights/conv2").glob("tmp*"))


def test_loaded_network_classifies_a_real_image(net, spec: ModelSpec, images_dir: Path) -> None:  # noqa: ANN001
    import torch

    from precompute.running.images import eval_transform, read_rgb

    image = eval_transform(spec)(read_rgb(images_dir / "n01443537/n01443537_goldfish.jpg"))
    with torch.no_grad():
        logits = net.logits(image[None])
    assert spec.classes[int(logits.argmax())].name == "goldfish"


def test_a_download_past_its_size_cap_is_refused_and_nothing_is_kept(tmp_path: Path) -> None:
    from precompute.models.weight_files import download_to

    served = tmp_path / "served"
    served.mkdir()
    (served / "big.bin").write_bytes(b"\0" * 5000)
    with serve_folder(served) as url, pytest.raises(WeightsError, match="larger than 1,000 bytes, refused"):
        download_to(f"{url}/big.bin", tmp_path / "cache/big.bin", WeightsError, limit=1000)
    assert not list((tmp_path / "cache").iterdir())
