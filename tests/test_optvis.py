"""Feature visualization parts: parameterizations, transforms, objectives, render, the vis stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sqlalchemy import func, select

from app.core.errors import MicroscopeError
from app.core.store import Artifact, Store
from app.core.store.algorithms import ALGORITHMS
from app.core.store.summary import coverage
from app.core.zoo import ModelSpec
from precompute.stages.catalog import catalog
from precompute.optvis import objectives, param
from precompute.optvis.render import render, resolve_precision
from precompute.optvis.transform import LUCENT, NONE, STANDARD, Transforms
from precompute.running.selection import parse_layers, units_per_layer
from precompute.running.context import Stage
from precompute.stages.vis import GUTTER, VisConfig, run_vis, stale_configs, unit_seed
from tests.support.cli import microscope


def _generators(count: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(seed) for seed in range(count)]


@pytest.mark.parametrize("name", ["fourier", "pixels"])
def test_parameterizations_give_valid_rgb_images(name: str) -> None:
    params, image = param.PARAMETERIZATIONS[name](48)(3, _generators(3), torch.device("cpu"))
    out = image()
    assert out.shape == (3, 3, 48, 48) and float(out.min().detach()) >= 0 and float(out.max().detach()) <= 1
    out.sum().backward()
    assert params[0].grad is not None and float(params[0].grad.abs().sum()) > 0
    again = param.PARAMETERIZATIONS[name](48)(3, _generators(3), torch.device("cpu"))[1]()
    assert torch.equal(out.detach(), again.detach())


def test_fourier_scales_low_frequencies_up() -> None:
    freqs = param.frequencies(8, 8)
    assert freqs[0, 0] == 0 and freqs[0, 1] < freqs[0, 4] and freqs.shape == (8, 5)


@pytest.mark.parametrize("decay", [1.0, 2.0])
def test_a_fourier_coefficients_amplitude_in_the_image_is_one_over_its_frequency(decay: float) -> None:
    """One coefficient at frequency 2/64, then at 8/64: the image's sinusoid is 4x (16x) weaker at the higher."""
    amplitudes = []
    for fx in (2, 8):
        params, image = param.fourier(64, decay_power=decay)(1, _generators(1), torch.device("cpu"))
        with torch.no_grad():
            params[0].zero_()
            params[0][0, 0, 0, fx, 0] = 0.05  # channel 0, a horizontal frequency, real part
            out = image()
        pre_sigmoid = torch.logit(out.double())[0, 0]  # linear in the coefficient (colour mix aside)
        amplitudes.append(float(pre_sigmoid.std()))
    assert amplitudes[0] / amplitudes[1] == pytest.approx(4.0**decay, rel=1e-3)


def test_transforms_are_random_differentiable_and_identity_when_off() -> None:
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    same = NONE(images, torch.Generator().manual_seed(0))
    assert torch.allclose(same, images, atol=1e-5)
    moved = STANDARD(images, torch.Generator().manual_seed(0))
    assert moved.shape == (2, 3, 44, 44)  # Lucid's canvas: 32 + 2 * 12 - 8 - 4
    other = STANDARD(images, torch.Generator().manual_seed(1))
    assert not torch.allclose(moved, other)
    moved.sum().backward()
    assert float(images.grad.abs().sum()) > 0


def test_the_network_sees_the_image_at_scale_one() -> None:
    """The centred view is the padded image's central canvas, pixel for pixel (no resampling)."""
    images = torch.rand(2, 3, 40, 40)
    padded = torch.nn.functional.pad(images, [12] * 4, value=0.5)
    assert torch.allclose(STANDARD.centered(images), padded[:, :, 6:-6, 6:-6], atol=1e-5)
    # A pure 10% zoom maps a feature 10 px wide onto 11 px: the scale is the drawn scale, not size/canvas.
    zoom = Transforms(pad=0, jitter=0, jitter_after=0, rotate_degrees=0.0, scale=(1.1, 1.1))
    stripe = torch.zeros(1, 3, 64, 64)
    stripe[..., 27:37] = 1.0
    seen = zoom(stripe, torch.Generator().manual_seed(0))[0, 0, 32]
    assert abs(float(seen.sum()) - 11.0) < 0.3
    assert LUCENT.centered(images).shape[-1] == 224


def test_no_black_frames_where_scale_or_rotation_reach_past_the_image() -> None:
    """Lucid pads with grey 0.5: a white image never shows a dark border, whatever the draw."""
    white = torch.ones(16, 3, 32, 32)
    extreme = Transforms(scale=(0.8, 0.8), rotate_degrees=10.0)
    for seed in range(3):
        seen = extreme(white, torch.Generator().manual_seed(seed))
        assert float(seen.min()) >= 0.5 - 1e-5
        corners = seen[:, :, [0, 0, -1, -1], [0, -1, 0, -1]]
        assert torch.allclose(corners, torch.full_like(corners, 0.5), atol=1e-5)


def test_diversity_is_lucids_objective() -> None:
    """Lucid: sum over ordered pairs i != j of <G_i, G_j> (normalized Gram matrices) / batch, per group."""
    torch.manual_seed(0)
    activation = torch.randn(8, 5, 3, 3)
    diversity = objectives.diversity("a", group=4)
    relu = activation.relu().reshape(8, 5, -1)
    grams = [g / g.norm() for g in torch.bmm(relu, relu.transpose(1, 2))]
    expected = sum(
        sum(float((grams[g + i] * grams[g + j]).sum()) for i in range(4) for j in range(4) if i != j) / 4
        for g in (0, 4)
    )
    assert abs(float(diversity.total({"a": activation})) - expected) < 1e-4
    combined = objectives.channel("a", 0) - 100 * diversity
    assert combined.group == 4
    channel_mean = float(activation[:, 0].relu().mean(dim=(1, 2)).sum()) / 4
    assert abs(float(combined.total({"a": activation})) - (channel_mean - 100 * expected)) < 1e-3


def test_redirected_relu_lets_a_switched_off_unit_learn() -> None:
    """Lucid's redirected ReLU: the plain gradient where any passes, else the one that raises the input."""
    off = torch.full((2, 1, 3, 3), -1.0, requires_grad=True)
    (-objectives.channel("a", 0)({"a": off})).sum().backward()  # the loss render minimizes
    assert bool((off.grad < 0).all())  # a descent step raises the switched-off unit
    mixed = torch.tensor([[[[-1.0, 2.0]]]], requires_grad=True)
    (-objectives.channel("a", 0)({"a": mixed})).sum().backward()
    assert mixed.grad.flatten().tolist() == [0.0, -0.5]
    centre = torch.full((3, 1, 3, 3), -1.0, requires_grad=True)
    (-objectives.neuron("a", 0)({"a": centre})).sum().backward()
    assert bool((centre.grad[:, 0, 1, 1] < 0).all()) and float(centre.grad.abs().sum()) == 3.0
    assert float(objectives.channel("a", 0, relu=False)({"a": off.detach()})[0]) == -1.0


def test_the_redirect_applies_where_and_when_lucid_applies_it() -> None:
    """Lucid overrides every Relu op's gradient, and only while the global step is at most 16: here every ReLU
    module of the network (one in-place) and the objective's own ReLU for the first 17 steps, the plain gradient
    after; the hooks are gone and the in-place flag restored afterwards."""
    from torch import nn

    conv = nn.Conv2d(1, 1, 1, bias=False)
    net = nn.Sequential(conv, nn.ReLU(inplace=True), nn.Conv2d(1, 1, 1, bias=False))
    with torch.no_grad():
        conv.weight.fill_(1.0)
        net[2].weight.fill_(1.0)

    def gradient(step: int) -> torch.Tensor:
        image = torch.full((1, 1, 2, 2), -1.0, requires_grad=True)  # the inner ReLU is off everywhere
        with objectives.redirecting(net, step):
            loss = -objectives.channel("a", 0)({"a": net(image)}).sum()
        loss.backward()
        return image.grad

    assert objectives.REDIRECT_STEPS == 17
    for step in (0, 16):
        assert bool((gradient(step) < 0).all()), step  # a descent step raises the input through both ReLUs
    for step in (17, 100):
        assert float(gradient(step).abs().sum()) == 0.0, step  # the plain ReLU gradient: nothing gets through
    assert not net[1]._forward_hooks and net[1].inplace is True


def test_objectives_compose() -> None:
    activations = {"a": torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)}
    channel = objectives.channel("a", 1)
    assert torch.allclose((channel - 2 * channel)(activations), -channel(activations))
    assert torch.allclose(channel(activations), torch.tensor([5.5, 17.5]))
    per_image = objectives.channel("a", [0, 2])(activations)
    assert torch.allclose(per_image, torch.tensor([1.5, 21.5]))
    assert torch.allclose(objectives.neuron("a", 1)(activations), torch.tensor([7.0, 19.0]))
    assert (channel + objectives.deepdream("a")).layers == frozenset({"a"})
    same = {"a": torch.ones(4, 3, 2, 2)}
    assert torch.allclose(objectives.diversity("a", group=2)(same), torch.ones(4))


def test_render_improves_each_units_objective(net) -> None:  # noqa: ANN001
    objective = objectives.channel("mixed3a", [3, 40])
    before = render(net, objective, param.fourier(64), [1, 2], STANDARD, steps=0)
    after = render(net, objective, param.fourier(64), [1, 2], STANDARD, steps=12)
    assert after.images.shape == (2, 3, 64, 64)
    assert bool((after.objective > before.objective + 1).all()), (before.objective, after.objective)
    # The reported objective is measured on the transforms' centred view, as optimized.
    with torch.no_grad():
        seen = net(STANDARD.centered(after.images), ("mixed3a",))
    assert torch.allclose(objective(seen), after.objective, rtol=1e-3, atol=1e-3)
    again = render(net, objective, param.fourier(64), [1, 2], STANDARD, steps=12)
    assert torch.equal(after.images, again.images)


def test_precision_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
    assert resolve_precision("auto", torch.device("cuda")) == "bf16"
    for native, expected in ((True, "bf16"), (False, "fp32")):  # what the CPU reports, both ways
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda native=native: native)
        assert resolve_precision("auto", torch.device("cpu")) == expected


def _config(spec: ModelSpec, **overrides: object) -> VisConfig:
    layers = parse_layers(spec, "conv2d2,softmax2")
    settings = dict(layers=tuple(layers), units=units_per_layer(layers, "0:2", explicit=True),
                    techniques=("channel", "diversity"), steps=2, size=32, batch=4, precision="fp32")
    return VisConfig(**{**settings, **overrides})  # type: ignore[arg-type]


def test_vis_stage_stores_images_with_recipes_and_skips_them_after(store: Store, spec: ModelSpec, net) -> None:  # noqa: ANN001
    catalog(store, spec)
    cpu = torch.device("cpu")
    first = run_vis(Stage(store, net, "w", cpu, progress=False), _config(spec))
    assert (first.rendered, first.skipped) == (8, 0)
    with store.session() as session:
        artifacts = session.scalars(select(Artifact)).all()
    assert len(artifacts) == 8 and all(store.blobs.has(a.blob_key) for a in artifacts)
    recipe = artifacts[0].recipe
    assert recipe["steps"] == 2 and recipe["parameterization"] == "fourier" and recipe["weights_sha256"] == "w"
    assert recipe["algorithm"] == ALGORITHMS["vis"] and recipe["canvas"] == 32 + 12
    grid = next(a for a in artifacts if a.technique == "diversity")
    with Image.open(store.blobs.path(grid.blob_key)) as opened:
        pixels = np.asarray(opened.convert("RGB"))
    assert pixels.shape == (2 * 32 + GUTTER, 2 * 32 + GUTTER, 3)  # four images with a white gutter between
    assert pixels[:, 32 + 1:32 + GUTTER - 1].min() >= 245 and pixels[32 + 1:32 + GUTTER - 1].min() >= 245
    assert recipe["unit_seeds"][0] == unit_seed(0, recipe["layer"], recipe["batch_units"][0], recipe["technique"])
    again = run_vis(Stage(store, net, "w", cpu, progress=False), _config(spec))
    assert (again.rendered, again.skipped) == (0, 8)
    changed = run_vis(Stage(store, net, "w", cpu, progress=False), _config(spec, steps=3, techniques=("channel",)))
    assert (changed.rendered, changed.skipped) == (4, 0)
    with store.session() as session:
        assert session.scalar(select(func.count()).select_from(Artifact)) == 8


def test_images_of_an_older_algorithm_are_rendered_again_with_their_settings(store: Store, spec: ModelSpec, net) -> None:  # noqa: ANN001
    catalog(store, spec)
    cpu = torch.device("cpu")
    run_vis(Stage(store, net, "w", cpu, progress=False), _config(spec, techniques=("channel",)))
    assert stale_configs(store, spec) == []
    with store.transaction() as session:
        old = session.scalars(select(Artifact)).all()[:3]
        for artifact in old:  # as stored by the code before issue 9
            artifact.recipe = {key: value for key, value in artifact.recipe.items() if key != "algorithm"}
            artifact.recipe_sha256 = "0" * 64
    stale = stale_configs(store, spec)
    assert sum(len(units) for config in stale for units in config.units.values()) == 3
    with store.session() as session:
        listed = {layer.name: layer.stale for layer in coverage(session)[0].layers if layer.stale}
    assert sum(counts["vis"] for counts in listed.values()) == 3  # what `microscope info` lists
    assert all(config.steps == 2 and config.size == 32 for config in stale)
    for config in stale:
        assert run_vis(Stage(store, net, "w", cpu, progress=False), config).rendered >= 1
    assert stale_configs(store, spec) == []


def test_vis_config_rejects_bad_input(spec: ModelSpec) -> None:
    with pytest.raises(MicroscopeError, match="unknown technique 'sparkle'"):
        _config(spec, techniques=("sparkle",))
    with pytest.raises(MicroscopeError, match="--batch must be at least 1"):
        _config(spec, batch=0)
    with pytest.raises(MicroscopeError, match="conv2d2: --units '600'"):
        units_per_layer(parse_layers(spec, "conv2d2"), "600", explicit=True)
    assert units_per_layer(parse_layers(spec, "all"), "100:200", explicit=False)["conv2d0"] == range(0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layers", "mixed4c", "--units", "512"], "mixed4c: --units '512' selects no unit"),
        (["--batch", "0"], "--batch must be at least 1"),
        (["--techniques", "channel,glow"], "unknown technique 'glow'"),
    ],
)
def test_vis_bad_arguments_write_nothing(args: list[str], message: str, tmp_path: Path) -> None:
    data = tmp_path / "store"
    assert microscope("precompute", "catalog", "--data", str(data)).returncode == 0
    before = sorted(path.name for path in data.rglob("*"))
    result = microscope("precompute", "vis", "--data", str(data), *args)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert sorted(path.name for path in data.rglob("*")) == before


def test_vis_needs_a_catalog(tmp_path: Path) -> None:
    result = microscope("precompute", "vis", "--data", str(tmp_path / "none"))
    assert result.returncode == 2 and "run `microscope precompute catalog` first" in result.stderr
