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
from app.core.settings import Settings
from app.core.store import Artifact, DatasetExample, DatasetImage, Edge, Layer, Store
from tests.support.own_models import backbone, mnist, modern, multispectral, write_checkpoint, write_planes
from tests.support.cli import microscope

DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def _names(path: Path, **fields: object) -> Path:
    path.write_text(json.dumps(fields), encoding="utf-8")
    return path


def _precompute_all(root: Path, factory: str, weights: Path, images: Path, names: Path | None = None,
                    expect: tuple[str, ...] = ()) -> Settings:
    """The store of ``precompute all``; ``expect``: lines its output (stdout and stderr) must hold."""
    args = ["precompute", "all", "--model", f"tests.support.own_models:{factory}", "--weights", str(weights), "--images",
            str(images), "--data", str(root), "--steps", "4", "--early-steps", "4", "--batch", "8", "--device", "cpu"]
    result = microscope(*args, *(["--names", str(names)] if names else []))
    assert result.returncode == 0, result.stderr[-2000:]
    for line in expect:
        assert line in result.stdout + result.stderr, (line, result.stdout[-2000:], result.stderr[-2000:])
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
        crop = Image.open(io.BytesIO(store.blobs.get(session.scalars(select(DatasetExample.crop_key)).first())))
    assert crop.mode == "L"  # examples shown as the network sees them: the luma
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
    common = ["--model", "tests.support.own_models:modern", "--weights", str(weights), "--names", str(names), "--images",
              str(tiny_images), "--data", str(tmp_path / "store"), "--device", "cpu"]
    factors = microscope("precompute", "factors", *common, "--layers", "add", "--method", "nmf", "--groups", "4",
                         "--samples", "500", "--no-accuracy")
    assert factors.returncode == 0 and "1 layers factored" in factors.stdout, factors.stderr[-800:]
    sanity = microscope("precompute", "sanity", *common, "--count", "2", "--methods", "gradient,grad_cam")
    assert sanity.returncode == 0, sanity.stderr[-800:]
    refused = microscope("precompute", "factors", *common, "--layers", "head_2", "--method", "nmf")
    assert refused.returncode == 2 and "head_2 is not factored: fully connected" in refused.stderr
    _every_page(store, "modern")  # the derived layer add_nmf's pages too


def test_a_backbone_without_a_classifier_has_every_page_but_classes(tmp_path: Path, tiny_images: Path) -> None:
    weights = write_checkpoint(backbone(), tmp_path / "backbone.pt")
    store = _precompute_all(tmp_path / "store", "backbone", weights, tiny_images,
                            _names(tmp_path / "backbone.json", input_size=64))
    data = _every_page(store, "backbone")
    assert "logits" not in [layer["kind"] for layer in data["layers"]]
    result = microscope("precompute", "sanity", "--model", "tests.support.own_models:backbone", "--weights", str(weights),
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
    loaded = load("tests.support.own_models:mnist", path, names).net.module.state_dict()
    expected = torch.load(reference, weights_only=True)
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(loaded[key], value)


def test_a_pickled_module_is_refused_then_loaded_with_the_flag(tmp_path: Path) -> None:
    pickled = write_checkpoint(mnist(), tmp_path / "model.pickle")
    names = _names(tmp_path / "names.json", input_size=32, mean=[0.5], std=[0.5])
    args = ("precompute", "catalog", "--model", "tests.support.own_models:mnist", "--weights", str(pickled), "--names",
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
    result = microscope("precompute", "catalog", "--model", "tests.support.own_models:mnist", "--weights", str(weights),
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


def test_a_4_channel_network_reads_npy_and_tiff_and_names_its_classes_by_folder(tmp_path: Path) -> None:
    images = write_planes(tmp_path / "images")
    np.save(images / "field" / "rgb.npy", np.zeros((40, 40, 3), dtype=np.float32))  # 3 channels: skipped, reported
    (images / "water" / "broken.tif").write_bytes(b"II*\0 not a tiff")
    (images / "water" / "photo.jpg").write_bytes(b"")  # an RGB file: not what this network reads, not listed
    weights = write_checkpoint(multispectral(), tmp_path / "ms.pt")
    names = _names(tmp_path / "ms.json", input_size=32, mean=[0.5] * 4, std=[0.25] * 4, classes="images")
    store = _precompute_all(tmp_path / "store", "multispectral", weights, images, names, expect=(
        "skipped " + str(images / "field" / "rgb.npy") + ": 3 channels where the network reads 4",
        "skipped " + str(images / "water" / "broken.tif") + ": not a readable TIFF file",
        "tuning: left out (tuning's stimuli (Gabors, curves, colours) are RGB images, and this network reads 4 channels",
    ))
    data = _every_page(store, "multispectral")
    assert [layer["kind"] for layer in data["layers"]] == ["conv", "conv", "logits"]
    client = TestClient(create_app(store))
    assert client.get(urls.unit("multispectral", "7", 2, json=True)).json()["title"] == "multispectral / 7 / 2 (water)"
    assert "No tuning:" in client.get(urls.model("multispectral")).text
    assert client.get(urls.probe_form("multispectral")).status_code == 415
    assert "universality" in client.get(urls.layer("multispectral", "7", json=True)).json()["skips"]
    with Store.open(store) as opened, opened.session() as session:
        recipe, key = session.execute(select(Artifact.recipe, Artifact.blob_key).where(Artifact.technique == "channel")).first()
        picture = Image.open(io.BytesIO(opened.blobs.get(key)))
        assert session.scalar(select(func.count()).select_from(DatasetImage)) == 12  # the 3-channel one left out
    assert not recipe["decorrelated_color"] and recipe["channels"].startswith("4: each channel in [0, 1]")
    assert picture.width == 30 and picture.height == 30 + 1 + 30 // 4  # the composite above a strip of 4 channels
    info = microscope("info", "--data", str(tmp_path / "store"))
    assert "no probes: a probe's upload" in info.stdout and "7                        ablation   fully connected" in info.stdout


def test_planes_read_npy_and_channel_first_tiff_alike_and_show_in_false_colour(tmp_path: Path) -> None:
    import tifffile

    from precompute.running.images import ImageFile, false_colour, list_images, load
    from precompute.models.traced import Description, TracedNetwork

    values = np.random.default_rng(0).random((20, 24, 4), dtype=np.float32)
    np.save(tmp_path / "a.npy", values)
    tifffile.imwrite(tmp_path / "b.tif", values.transpose(2, 0, 1), photometric="minisblack")  # planar, as instruments write them
    tifffile.imwrite(tmp_path / "c.tiff", values, photometric="minisblack", planarconfig="contig")
    loaded = [load(ImageFile(tmp_path, name, None)).values for name in ("a.npy", "b.tif", "c.tiff")]
    assert all(np.array_equal(array, values) for array in loaded)
    net = TracedNetwork(multispectral(), Description(name="ms", input_size=32, mean=(0.5,) * 4, std=(0.25,) * 4))
    assert [file.path for file in list_images(tmp_path, net.spec)] == ["a.npy", "b.tif", "c.tiff"]
    batch = torch.rand(2, 4, 32, 32)
    torch.testing.assert_close(net.preprocess(batch), (batch - 0.5) / 0.25)  # channels as given, no RGB order
    white, black = np.ones((1, 1, 4)), np.zeros((1, 1, 4))
    assert false_colour(white).tolist() == [[[255, 255, 255]]] and false_colour(black).tolist() == [[[0, 0, 0]]]
    one = np.zeros((1, 1, 4))
    one[..., 0] = 1
    assert false_colour(one)[0, 0].argmax() == 0  # channel 0 is red
    gray = np.full((1, 1, 1), 0.5)
    assert false_colour(gray).tolist() == [[[128, 128, 128]]]


def test_a_512px_network_gets_lucids_renders_and_its_examples(tmp_path: Path, tiny_images: Path) -> None:
    weights = write_checkpoint(backbone(), tmp_path / "backbone.pt")
    store = _precompute_all(tmp_path / "store", "backbone", weights, tiny_images,
                            _names(tmp_path / "backbone.json", input_size=512))
    _every_page(store, "backbone")
    with Store.open(store) as opened, opened.session() as session:
        assert session.scalar(select(Layer.size).where(Layer.name == "4")) == 128  # 512 px in, strides 2 and 2
        recipes = session.scalars(select(Artifact.recipe)).all()
    assert recipes and all("sizing" not in recipe and recipe["decorrelated_color"] for recipe in recipes)


def test_steps_follow_each_layers_receptive_field() -> None:
    from app.core.zoo import get_model
    from precompute.models.traced import Description, TracedNetwork
    from precompute.running.recipes import ON_DEMAND

    spec = get_model("inceptionv1_caffe")  # the zoo's stems stay what they were: conv2d0-2 (7, 11, 19 px of 224)
    assert [layer.name for layer in spec.main_layers if ON_DEMAND.is_early(layer, spec.input_size)] == [
        "conv2d0", "conv2d1", "conv2d2"]
    net = TracedNetwork(mnist(), Description(name="mnist", input_size=32, mean=(0.5,), std=(0.5,)))
    # The 3 x 3 stem (3 px of 32) takes the early steps; the second convolution (8 px) the plain ones.
    assert [ON_DEMAND.steps_for(layer, 32) for layer in net.spec.main_layers] == [ON_DEMAND.early_steps, ON_DEMAND.steps]
