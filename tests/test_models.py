"""Traced networks: specs read off the graph, activations by name, weights, and composed kernels.

Every network here has seeded random weights: no weights but BVLC's are reachable from this machine.
"""

from __future__ import annotations

import functools
import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.core.errors import MicroscopeError, UnknownModel, WeightsError
from app.core.zoo import get_model
from precompute.models import build, load, seeded_state_dict
from precompute.models.weight_files import file_sha256
from precompute.models.sources import fetch_torchvision as fetch, mirrored
from tests.support.kernels import assert_kernel_is_the_jacobian
from tests.support.tiny_model import FACTORY


@pytest.fixture(scope="module")
def tiny(tiny_net):  # noqa: ANN001, ANN201
    return tiny_net


def test_the_tiny_spec_is_read_off_its_graph(tiny) -> None:  # noqa: ANN001
    spec = tiny.spec
    kinds = {layer.name: layer.kind for layer in spec.layers}
    assert [layer.name for layer in spec.main_layers] == ["stem_0", "mixed", "res1", "res2"]
    assert kinds["fc"] == "logits" and kinds["mixed"] == "mixed" and kinds["res1"] == "residual"
    mixed = spec.layer("mixed")
    assert mixed.inputs == ("mixed_branch1_0", "mixed_branch2_2_0", "mixed_branch3_1_0")
    assert sum(spec.layer(name).channels for name in mixed.inputs) == mixed.channels == 14
    assert spec.layer("mixed_branch2_2_0").inputs == ("mixed_branch2_0_0",)
    assert spec.layer("res1").inputs == ("res1_conv3_0", "res1_downsample_0")
    assert spec.layer("res2").inputs == ("res1", "res2_conv3_0")  # the identity path reads the block before
    assert spec.layer("res2_conv2_0").block == "res2" and spec.layer("res1").previous == "mixed"
    # geometry from kernels, strides and paddings: stem 5/2, pool 3/2, 3x3 at stride 4, stride-2 3x3
    stem, branch = spec.layer("stem_0"), spec.layer("mixed_branch2_2_0")
    assert (stem.size, stem.stride, stem.receptive_field, stem.offset) == (112, 2, 5, 0)
    assert (branch.size, branch.stride, branch.receptive_field) == (56, 4, 5 + 2 * 2 + 2 * 4)
    assert spec.layer("res1_conv2_0").stride == 8 and spec.layer("fc").receptive_field == 224
    assert spec.unit_label(spec.layer("fc"), 488) == "chain"


def test_activations_match_the_spec_and_stop_early(tiny) -> None:  # noqa: ANN001
    spec = tiny.spec
    with torch.no_grad():
        everything = tiny(torch.rand(2, 3, 224, 224))
    for layer in spec.layers:
        expected = (2, layer.channels) if layer.kind == "logits" else (2, layer.channels, layer.size, layer.size)
        assert tuple(everything[layer.name].shape) == expected, layer.name
    calls: list[str] = []
    hooks = [tiny.module.res2.conv1[0].register_forward_hook(lambda *_: calls.append("res2")),
             tiny.module.mixed.branch1[0].register_forward_hook(lambda *_: calls.append("mixed"))]
    try:
        with torch.no_grad():
            out = tiny(torch.rand(1, 3, 224, 224), ["mixed"])
    finally:
        for hook in hooks:
            hook.remove()
    assert list(out) == ["mixed"] and calls == ["mixed"]
    # a mixed layer is its branches' pre-ReLU values side by side: negative values survive
    assert float(out["mixed"].min()) < 0


def test_the_network_sees_torchvisions_normalization(tiny) -> None:  # noqa: ANN001
    images = torch.rand(1, 3, 224, 224)
    expected = tiny.module(torch.tensor([[0.485, 0.456, 0.406]]).view(1, 3, 1, 1).sub(images).neg()
                           .div(torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)))
    with torch.no_grad():
        assert torch.allclose(tiny.logits(images), expected, atol=1e-5)


def _scale(bn: nn.BatchNorm2d, x: Tensor) -> Tensor:
    """BatchNorm without its shift: the linear part the circuits fold into the conv before it."""
    return x * (bn.weight / torch.sqrt(bn.running_var + bn.eps))[None, :, None, None]


def _conv_bn(block: nn.Sequential, x: Tensor) -> Tensor:
    conv, bn = block[0], block[1]
    return _scale(bn, F.conv2d(x, conv.weight, None, conv.stride, conv.padding))


def _stand_in_mixed(model: nn.Module, x: Tensor) -> Tensor:
    """stem (pre-ReLU) -> mixed, ReLUs as identity, max pools as average pools (padding counted)."""
    x = F.avg_pool2d(x, 3, 2, 1, count_include_pad=True)
    mixed = model.mixed
    return torch.cat([
        _conv_bn(mixed.branch1, x),
        _conv_bn(mixed.branch2[2], _conv_bn(mixed.branch2[0], x)),
        _conv_bn(mixed.branch3[1], F.avg_pool2d(x, 3, 1, 1, count_include_pad=True)),
    ], dim=1)


def _stand_in_residual(block: nn.Module, x: Tensor) -> Tensor:
    path = _conv_bn(block.conv3, _conv_bn(block.conv2, _conv_bn(block.conv1, x)))
    return path + (_conv_bn(block.downsample, x) if block.downsample is not None else x)


@pytest.mark.parametrize("pair", ["stem_0>mixed", "mixed>res1", "res1>res2", "stem_0>res1"])
def test_composed_kernels_equal_the_jacobian_of_the_linear_stand_in(tiny, pair: str) -> None:  # noqa: ANN001
    """Through BatchNorm, pools, a concatenation, a strided residual block with its projection, the identity path."""
    model = tiny.module.double()
    try:
        source, target = (tiny.spec.layer(name) for name in pair.split(">"))
        stand_ins = {
            "stem_0>mixed": lambda h: _stand_in_mixed(model, h),
            "mixed>res1": lambda h: _stand_in_residual(model.res1, h),
            "res1>res2": lambda h: _stand_in_residual(model.res2, h),
            "stem_0>res1": lambda h: _stand_in_residual(model.res1, _stand_in_mixed(model, h)),
        }
        with torch.no_grad():
            pieces = tiny.linear_map(source, target)
        assert pieces[0].expanded
        assert_kernel_is_the_jacobian(pieces, stand_ins[pair], source.channels, source.size, 9, 10)
    finally:
        tiny.module.float()


def test_the_classifier_pair_is_its_weight_and_a_branch_pair_its_conv(tiny) -> None:  # noqa: ANN001
    spec = tiny.spec
    (logits,) = tiny.linear_map(spec.layer("res2"), spec.layer("fc"))
    assert torch.equal(logits.kernel.weights[:, :, 0, 0], tiny.module.fc.weight.float()) and not logits.expanded
    (branch,) = tiny.linear_map(spec.layer("res1_conv1_0"), spec.layer("res1_conv2_0"))
    block = tiny.module.res1.conv2
    expected = _scale(block[1], block[0].weight.permute(1, 0, 2, 3)).permute(1, 0, 2, 3)
    assert torch.allclose(branch.kernel.weights, expected, atol=1e-6) and branch.kernel.stride == 2


def test_derived_googlenet_geometry_equals_the_hand_written_inceptionv1() -> None:
    """Two independent derivations: torchvision's module traced, and InceptionV1's spec written as data."""
    derived, declared = build("googlenet").spec, get_model("inceptionv1_caffe")
    assert derived.layer_names == declared.layer_names
    for mine, theirs in zip(derived.layers, declared.layers):
        assert (mine.kind, mine.channels, mine.size, mine.stride, mine.inputs, mine.previous, mine.block) == (
            theirs.kind, theirs.channels, theirs.size, theirs.stride, theirs.inputs, theirs.previous,
            theirs.block), mine.name
        # torchvision pools 2x2 before mixed5a where Caffe pools 3x3: centres move one stride-16 step
        shift = 16 if mine.name.startswith("mixed5") else 0
        assert mine.offset == theirs.offset - shift, mine.name
    # torchvision's "5x5" branches are 3x3: two pixels narrower on each side at stride 8
    assert derived.layer("mixed3a_5x5").receptive_field == declared.layer("mixed3a_5x5").receptive_field - 16
    assert derived.layer("mixed3a_3x3").receptive_field == declared.layer("mixed3a_3x3").receptive_field


@pytest.mark.parametrize(("name", "layers", "main_units", "first", "last"), [
    ("alexnet", 8, 9344, "conv1", "fc8"),
    ("vgg19", 19, 13696, "conv1_1", "fc8"),
    ("resnet50", 70, 15168, "conv1", "fc"),
])
def test_zoo_models_are_named_as_microscope(name: str, layers: int, main_units: int, first: str, last: str) -> None:
    spec = build(name).spec
    assert len(spec.layers) == layers and sum(layer.channels for layer in spec.main_layers) == main_units
    assert spec.layers[0].name == first and spec.layers[-1].name == last and spec.layers[-1].kind == "logits"
    assert spec.mean == (0.485, 0.456, 0.406) and spec.channel_order == "RGB"


def test_vgg_fc6_reads_conv5_4_through_the_pool_as_a_wide_kernel() -> None:
    torch.manual_seed(0)
    net = build("vgg19")
    (piece,) = net.linear_map(net.spec.layer("conv5_4"), net.spec.layer("fc6"))
    assert tuple(piece.kernel.weights.shape) == (4096, 512, 14, 14) and piece.expanded  # 7x7 weights over a 2x2 pool


def test_a_wrong_or_corrupt_state_dict_is_named(tiny_weights: Path, tmp_path: Path) -> None:
    other = tmp_path / "alexnet.pt"
    torch.save({"features.0.weight": torch.zeros(64, 3, 11, 11)}, other)
    with pytest.raises(WeightsError, match=r"alexnet.pt: not weights of this network: missing"):
        load(FACTORY, other)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(tiny_weights.read_bytes()[:500])
    with pytest.raises(WeightsError, match="corrupt.pt: not a PyTorch state dict"):
        load(FACTORY, corrupt)
    with pytest.raises(WeightsError, match="no such weights file"):
        load(FACTORY, tmp_path / "missing.pt")
    with pytest.raises(MicroscopeError, match="give its weights with --weights"):
        load(FACTORY, None)
    with pytest.raises(UnknownModel, match="resnet50"):
        load("resnet05", None)
    with pytest.raises(MicroscopeError, match="cannot import"):
        load("tests.no_such_module:net", tiny_weights)


def test_seeded_weights_are_the_same_everywhere(tmp_path: Path) -> None:
    first, second = seeded_state_dict(FACTORY, 3), seeded_state_dict(FACTORY, 3)
    assert all(torch.equal(first[key], second[key]) for key in first)
    assert not torch.equal(first["fc.weight"], seeded_state_dict(FACTORY, 4)["fc.weight"])


def test_a_names_file_renames_layers(tiny_weights: Path, tmp_path: Path) -> None:
    names = tmp_path / "names.json"
    names.write_text(json.dumps({"name": "tinynet", "names": {"stem.0": "conv2d0", "res1": "block1"}}))
    spec = load(FACTORY, tiny_weights, names).net.spec
    assert spec.name == "tinynet" and spec.layer("conv2d0").kind == "conv" and spec.layer("res2").previous == "block1"
    names.write_text(json.dumps({"nmaes": {}}))
    with pytest.raises(MicroscopeError, match="unknown fields"):
        load(FACTORY, tiny_weights, names)


@pytest.fixture
def mirror(tmp_path: Path, tiny_weights: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server holding a copy of torchvision's folder layout."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", folder
    finally:
        server.shutdown()


def test_torchvision_download_checks_the_hash_in_the_name(mirror, tiny_weights: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: ANN001
    url, folder = mirror
    prefix = file_sha256(tiny_weights)[:8]
    (folder / f"tiny-{prefix}.pth").write_bytes(tiny_weights.read_bytes())
    cache = tmp_path / "cache"
    fetched = fetch(f"{url}tiny-{prefix}.pth", cache)
    assert fetched.read_bytes() == tiny_weights.read_bytes()
    # a file whose bytes do not match the hash in its name is refused, and nothing is kept
    (folder / "resnet50-11ad3fa6.pth").write_bytes(tiny_weights.read_bytes())
    with pytest.raises(WeightsError, match="resnet50-11ad3fa6.pth"):
        fetch(f"{url}resnet50-11ad3fa6.pth", cache)
    assert not (cache / "resnet50-11ad3fa6.pth").exists()
    assert [path.name for path in cache.iterdir()] == [f"tiny-{prefix}.pth"]  # no partial file left either
    monkeypatch.setenv("MICROSCOPE_WEIGHTS_MIRROR", url)
    assert mirrored("https://download.pytorch.org/models/resnet50-11ad3fa6.pth") == url + "resnet50-11ad3fa6.pth"
    with pytest.raises(WeightsError, match="could not download"):
        fetch(f"{url}missing-12345678.pth", cache)
