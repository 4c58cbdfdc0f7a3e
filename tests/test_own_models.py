"""A researcher's own network (issue 31): 1 channel at 32 px, `Flatten` then `Linear`, GELU and LayerNorm, a
backbone with no classifier, every checkpoint format; every failure one line and exit 2."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from app import urls
from app.main import create_app
from app.settings import Settings
from app.store import Artifact, Edge, Store
from tests.own_models import backbone, mnist, modern, write_checkpoint
from tests.test_cli import microscope

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _names(path: Path, **fields: object) -> Path:
    path.write_text(json.dumps(fields), encoding="utf-8")
    return path


def _precompute_all(root: Path, factory: str, weights: Path, images: Path, names: Path | None = None) -> Settings:
    args = ["precompute", "all", "--model", f"tests.own_models:{factory}", "--weights", str(weights), "--images",
            str(images), "--data", str(root), "--steps", "4", "--early-steps", "4", "--batch", "8", "--device", "cpu"]
    result = microscope(*args, *(["--names", str(names)] if names else []))
    assert result.returncode == 0, result.stderr[-2000:]
    return Settings.load(root)


def _every_page(settings: Settings, model: str) -> dict:
    """Every layer's page and two units' pages, with their JSON twins: all answer 200."""
    client = TestClient(create_app(settings))
    data = client.get(urls.model(model, json=True)).json()
    assert client.get(urls.model(model)).status_code == 200
    for layer in data["layers"]:
        for json_twin in (False, True):
            assert client.get(urls.layer(model, layer["name"], json=json_twin)).status_code == 200, layer["name"]
            for unit in range(min(2, layer["channels"])):
                page = client.get(urls.unit(model, layer["name"], unit, json=json_twin))
                assert page.status_code == 200, (layer["name"], unit)
    return data


@pytest.fixture(scope="module")
def mnist_store(tmp_path_factory: pytest.TempPathFactory, tiny_images: Path) -> Settings:
    folder = tmp_path_factory.mktemp("mnist")
    weights = write_checkpoint(mnist(), folder / "mnist.pt")
    names = _names(folder / "mnist.json", input_size=32, mean=[0.1307], std=[0.3081], classes=DIGITS)
    return _precompute_all(folder / "store", "mnist", weights, tiny_images, names)


def test_a_grayscale_32px_sequential_with_flatten_goes_through_every_stage(mnist_store: Settings) -> None:
    data = _every_page(mnist_store, "mnist")
    assert [layer["kind"] for layer in data["layers"]] == ["conv", "conv", "logits"]
    with Store.open(mnist_store) as store, store.session() as session:
        assert session.scalar(select(func.count()).select_from(Edge)) > 0  # circuits through Flatten -> Linear
        recipes = session.scalars(select(Artifact.recipe)).all()
        pixels = np.asarray(Image.open(io.BytesIO(store.blobs.get(session.scalars(select(Artifact.blob_key)).first()))))
    assert all(recipe["canvas"] == 32 and not recipe["decorrelated_color"] for recipe in recipes)
    assert "sized to the network's 32 px input" in recipes[0]["sizing"]
    assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] == pixels[..., 2]).all()  # gray
    client = TestClient(create_app(mnist_store))
    logits = client.get(urls.unit("mnist", "7", 3, json=True)).json()
    assert logits["title"] == "mnist / 7 / 3 (three)"


def test_flatten_then_linear_circuits_are_the_linear_weights_per_channel_and_position() -> None:
    from precompute.models.traced import Description, TracedNetwork

    module = mnist()
    net = TracedNetwork(module, Description(name="mnist", input_size=32, mean=(0.5,), std=(0.5,)))
    source, target = net.spec.layer("3"), net.spec.layer("7")
    kernel = net.linear_map(source, target)[0].kernel
    expected = module[7].weight.detach().reshape(10, 16, 8, 8)  # the pool before it: an average over 2x2
    pooled = torch.nn.functional.interpolate(expected, scale_factor=2, mode="nearest") / 4
    assert kernel.weights.shape == (10, 16, 16, 16)
    torch.testing.assert_close(kernel.weights, pooled)


def test_a_grayscale_network_reads_the_luma_of_rgb_and_gray_files_alike() -> None:
    from precompute.models.traced import Description, TracedNetwork

    module = mnist().eval()
    net = TracedNetwork(module, Description(name="mnist", input_size=32, mean=(0.25,), std=(0.5,)))
    rgb = torch.rand(2, 3, 32, 32)
    gray = rgb[:, :1] * 0.299 + rgb[:, 1:2] * 0.587 + rgb[:, 2:] * 0.114
    torch.testing.assert_close(net.logits(rgb), module((gray - 0.25) / 0.5))
    flat = torch.rand(1, 1, 32, 32).expand(-1, 3, -1, -1)  # a gray file read as RGB: R = G = B
    torch.testing.assert_close(net.logits(flat), module((flat[:, :1] - 0.25) / 0.5))


def test_gelu_layernorm_depthwise_and_grouped_convolutions(tmp_path: Path, tiny_images: Path) -> None:
    from precompute.models.traced import Description, TracedNetwork

    module = modern().eval()
    torch.manual_seed(0)
    with torch.no_grad():  # every norm's learned scale too, not its initial ones
        for parameter in module.parameters():
            parameter.copy_(torch.randn_like(parameter))
    net = TracedNetwork(module, Description(name="modern", input_size=64))
    kinds = {layer.name: layer.kind for layer in net.spec.layers}
    assert kinds == {"stem_0": "conv", "depthwise_0": "branch", "grouped_0": "branch", "add": "residual",
                     "head_2": "logits"}
    assert net.spec.layer("grouped_0").receptive_field == 11 and net.spec.layer("add").stride == 2
    # A depthwise convolution then a LayerNorm over channels: each unit reads its own channel, scaled by the norm.
    kernel = net.linear_map(net.spec.layer("stem_0"), net.spec.layer("depthwise_0"))[0].kernel
    group_norm = module.stem[1].weight.detach()
    expected = module.depthwise[0].weight.detach()[:, 0] * group_norm[:, None, None]
    torch.testing.assert_close(kernel.weights.diagonal(dim1=0, dim2=1).permute(2, 0, 1), expected)
    assert kernel.weights.sum(dim=(2, 3)).count_nonzero() == 8
    # A LayerNorm over channels (permute, norm, permute) then a grouped convolution: the norm's scale per input.
    kernel = net.linear_map(net.spec.layer("depthwise_0"), net.spec.layer("grouped_0"))[0].kernel
    layer_norm = module.depthwise[1].norm.weight.detach()
    norm = module.grouped[1]  # the BatchNorm after it, folded into the unit's value
    folded = (norm.weight / (norm.running_var + norm.eps).sqrt()).detach()
    grouped = module.grouped[0].weight.detach().repeat(1, 2, 1, 1) * torch.block_diag(
        torch.ones(4, 4), torch.ones(4, 4))[:, :, None, None]  # groups of 4 inputs
    torch.testing.assert_close(kernel.weights, grouped * layer_norm[None, :, None, None] * folded[:, None, None, None])
    assert "GroupNorm, LayerNorm" in net.approximation(net.spec.layer("stem_0"), net.spec.layer("add"), False)
    weights = write_checkpoint(modern(), tmp_path / "modern.pt")
    names = _names(tmp_path / "modern.json", input_size=64, classes=["a", "b", "c", "d", "e"])
    store = _precompute_all(tmp_path / "store", "modern", weights, tiny_images, names)
    _every_page(store, "modern")


def test_a_backbone_without_a_classifier_has_every_page_but_classes(tmp_path: Path, tiny_images: Path) -> None:
    weights = write_checkpoint(backbone(), tmp_path / "backbone.pt")
    store = _precompute_all(tmp_path / "store", "backbone", weights, tiny_images,
                            _names(tmp_path / "backbone.json", input_size=64))
    data = _every_page(store, "backbone")
    assert "logits" not in [layer["kind"] for layer in data["layers"]]
    result = microscope("precompute", "sanity", "--model", "tests.own_models:backbone", "--weights", str(weights),
                        "--names", str(tmp_path / "backbone.json"), "--images", str(tiny_images), "--data",
                        str(tmp_path / "store"), "--count", "2", "--methods", "gradient", "--device", "cpu")
    assert result.returncode == 2 and "has no classifier" in result.stderr, result.stderr[-500:]


@pytest.mark.parametrize("suffix", [".pt", ".safetensors", ".jit", "folder"])
def test_every_checkpoint_format_loads_the_same_weights(tmp_path: Path, suffix: str) -> None:
    from precompute.models import load

    reference = write_checkpoint(mnist(), tmp_path / "reference.pt")
    if suffix == "folder":  # the model's folder: its one checkpoint beside a README
        (tmp_path / "model").mkdir()
        write_checkpoint(mnist(), tmp_path / "model" / "weights.safetensors")
        (tmp_path / "model" / "README.md").write_text("my model", encoding="utf-8")
        path = tmp_path / "model"
    else:
        path = write_checkpoint(mnist(), tmp_path / f"weights{suffix}")
    names = _names(tmp_path / "names.json", input_size=32, mean=[0.5], std=[0.5])
    loaded = load("tests.own_models:mnist", path, names).net.module.state_dict()
    expected = torch.load(reference, weights_only=True)
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value)


def test_a_pickled_module_is_refused_then_loaded_with_the_flag(tmp_path: Path) -> None:
    pickled = write_checkpoint(mnist(), tmp_path / "model.pickle")
    names = _names(tmp_path / "names.json", input_size=32, mean=[0.5], std=[0.5])
    args = ("precompute", "catalog", "--model", "tests.own_models:mnist", "--weights", str(pickled), "--names",
            str(names), "--data", str(tmp_path / "store"))
    refused = microscope(*args, env={"MICROSCOPE_TRUST_PICKLE": ""})
    assert refused.returncode == 2 and "--trust-pickle" in refused.stderr
    assert refused.stderr.strip().count("\n") == 0 and "Traceback" not in refused.stderr
    trusted = microscope(*args, "--trust-pickle", env={"MICROSCOPE_TRUST_PICKLE": ""})
    assert trusted.returncode == 0, trusted.stderr[-500:]
    assert "3 layers and 34 units added" in trusted.stdout


@pytest.mark.parametrize("fields, message", [
    ({"input_size": 32}, "mean and std go in a names file"),
    ({"input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}, "mean has 3 values for 1 input channels"),
    ({"input_size": 32, "mean": [0.5], "std": [0.5], "classes": ["a", "b"]}, "names 2 classes"),
    ({"input_size": 12, "mean": [0.5], "std": [0.5]}, "does not run on a 1-channel 12x12 image"),
])
def test_a_wrong_names_file_is_one_line_and_exit_2(tmp_path: Path, fields: dict, message: str) -> None:
    weights = write_checkpoint(mnist(), tmp_path / "mnist.pt")
    result = microscope("precompute", "catalog", "--model", "tests.own_models:mnist", "--weights", str(weights),
                        "--names", str(_names(tmp_path / "names.json", **fields)), "--data", str(tmp_path / "store"))
    assert result.returncode == 2 and message in result.stderr, result.stderr[-800:]
    assert result.stderr.strip().count("\n") == 0


def test_renders_are_sized_to_the_network() -> None:
    from precompute.optvis.transform import STANDARD, fit

    assert fit(224, False, 128) == fit(512, False, 128) and fit(224, False, 128).transforms == STANDARD  # unchanged
    small = fit(32, True, 224)
    assert small.transforms.canvas(small.size) == 32 and small.size == 30
    assert (small.transforms.pad, small.transforms.jitter, small.transforms.jitter_after) == (2, 1, 1)
    assert fit(64, False, 128).transforms.canvas(fit(64, False, 128).size) == 64
    fixed = fit(224, True, 128)  # a 224 px network that flattens a fixed map: the canvas is its input side
    assert fixed.transforms.canvas(fixed.size) == 224 and fixed.size == 128
