"""Attribution (issue 23): Captum's maps on the tiny models, the randomization test, and the probe page around them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app import urls
from app.main import create_app
from app.core.settings import Settings
from app.core.store import Store
from app.core.verdicts import DECORRELATED, judge, judged_step
from precompute.methods.attribution import (Maps, Target, attribute, attribute_maps, cascading_randomization, compare, randomized,
                                   weight_groups)
from precompute.stages.examples import input_transform
from precompute.running.images import list_images, load_rgb
from precompute.models import load, seeded_state_dict
from precompute.stages.sanity import SanityConfig, run_sanity, summarize
from precompute.running.context import Stage
from tests.support.live import JPEG, MODEL, copy_store, jpeg, worker

DETECTORS = "tests.support.tiny_model:detectors"


@pytest.fixture(scope="module")
def detectors(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    path = tmp_path_factory.mktemp("detectors") / "detectors.pt"
    torch.save(seeded_state_dict(DETECTORS, 0), path)
    return load(DETECTORS, path).net.eval()


def _images(folder: Path, spec, count: int) -> list[torch.Tensor]:  # noqa: ANN001
    frame = input_transform(spec)
    return [frame(load_rgb(file)) for file in list_images(folder)[:count]]


def test_integrated_gradients_are_complete(tiny_net, tiny_images: Path) -> None:  # noqa: ANN001
    """The attributions sum to the target's change from the black baseline (Sundararajan et al.'s completeness)."""
    image = _images(tiny_images, tiny_net.spec, 1)[0]
    logits = tiny_net.logits_layer.name
    values, params = attribute(tiny_net, image, Target(logits, 3), "integrated_gradients")
    assert values.shape == image.shape[1:] and params["change"] != 0
    assert abs(params["sum"] - params["change"]) <= 0.01 * abs(params["change"]), params
    # A unit behind more ReLU kinks: the sum closes on the change as the path's steps grow.
    errors = []
    for steps in (8, 64, 512):
        _, params = attribute(tiny_net, image, Target("res1", 2, 1, 1), "integrated_gradients", steps=steps)
        errors.append(abs(params["sum"] - params["change"]))
    assert errors[0] > errors[1] > errors[2] and errors[2] <= 0.01 * abs(params["change"]) + 2e-5, errors


def test_a_unit_reading_the_left_half_gets_no_attribution_on_the_right(detectors, tiny_images: Path) -> None:  # noqa: ANN001
    """A 15x15 detector at a position whose receptive field lies in the image's left half: nothing to its right."""
    spec = detectors.spec
    side = spec.input_size
    image = _images(tiny_images, spec, 1)[0]
    column = side // 2 - 8  # its field: columns side/2 - 15 ... side/2 - 1
    for method in ("gradient", "integrated_gradients"):
        values, _ = attribute(detectors, image, Target("detect", 1, side // 2, column), method)
        assert values[:, side // 2:].max() == 0, method
        assert values[:, :side // 2].max() > 0, method
    with pytest.raises(Exception, match="before"):  # Grad-CAM of a unit needs a layer before it: there is none
        attribute(detectors, image, Target("detect", 1, side // 2, column), "grad_cam")


def test_grad_cam_of_a_class_and_of_a_unit(tiny_net, tiny_images: Path) -> None:  # noqa: ANN001
    image = _images(tiny_images, tiny_net.spec, 1)[0]
    logits = tiny_net.logits_layer.name
    maps = attribute_maps(tiny_net, image, Target(logits, 7), "grad_cam")
    cam, params = maps.shown, maps.params
    assert cam.shape == image.shape[1:] and params["layer"] == "res2"  # the last conv layer
    assert np.array_equal(cam, np.maximum(maps.signed, 0))  # the shown map is the signed one's ReLU
    mixed = [attribute_maps(tiny_net, image, Target(logits, c), "grad_cam", cam_layer="mixed") for c in range(12)]
    assert any(m.signed.min() < 0 < m.signed.max() and m.shown.min() == 0 for m in mixed)  # where the ReLU cuts
    at, params = attribute(tiny_net, image, Target(logits, 7), "grad_cam", cam_layer="mixed")
    assert params["layer"] == "mixed" and not np.allclose(at, cam)
    unit, params = attribute(tiny_net, image, Target("res1", 2, 1, 1), "grad_cam")
    assert params["layer"] == "mixed" and unit.shape == image.shape[1:]  # a unit's: the main layer before its own
    with pytest.raises(Exception, match="needs a layer before"):
        attribute(tiny_net, image, Target("mixed", 2, 1, 1), "grad_cam", cam_layer="res1")


def test_the_randomization_test_decorrelates_the_gradient_maps_and_not_the_control(tiny_net, tiny_images: Path) -> None:  # noqa: ANN001
    """Adebayo et al.'s cascade on the tiny model: with the top layers random, the gradient's maps follow the model no
    longer while guided backprop's (the negative control) stay alike; the real network is put back."""
    images = _images(tiny_images, tiny_net.spec, 6)
    logits = tiny_net.logits_layer.name
    groups = [name for name, _ in weight_groups(tiny_net)]
    assert groups == ["fc", "res2", "res1", "mixed", "stem"]  # the top-level modules, from the top down
    real = attribute_maps(tiny_net, images[0], Target(logits, 1), "gradient")
    with randomized(tiny_net, 1) as top:
        changed = attribute_maps(top, images[0], Target(logits, 1), "gradient")
    assert not np.allclose(real.signed, changed.signed)
    cascade, layers = cascading_randomization(tiny_net, images, ("gradient", "guided_backprop"))
    assert [step["randomized"] for step in cascade["gradient"]] == groups and len(cascade["gradient"][0]["pairs"]) == 6
    assert layers == {"gradient": "", "guided_backprop": ""}
    step = judged_step(len(groups)) - 1  # fc and res2 random
    figures = {method: summarize(cascade[method][step]["pairs"])[0]["spearman"] for method in cascade}
    # Seeded, untrained weights: the gradient keeps some order, but the control stays clearly more alike.
    assert figures["guided_backprop"]["low"] > max(DECORRELATED, figures["gradient"]["high"]), figures
    last = summarize(cascade["gradient"][-1]["pairs"])[0]["spearman"]
    assert last["high"] < DECORRELATED, last  # every weight random: the gradient no longer follows the model
    again = attribute_maps(tiny_net, images[0], Target(logits, 1), "gradient")
    assert np.array_equal(again.signed, real.signed)  # the real network is left as it was


def test_both_sides_name_the_same_probe_methods() -> None:
    from app.attribution import PROBE_METHODS
    from precompute.methods.attribution import METHODS

    assert PROBE_METHODS == METHODS


def test_degenerate_maps_are_counted_never_scored() -> None:
    """A constant map (all zero included) or a non-finite one has no rank order: `compare` refuses to score it, and a
    step whose maps are mostly degenerate gives no figures, only the count."""
    rng = np.random.default_rng(0)
    varied = Maps(rng.normal(size=(64, 64)), rng.random((64, 64)), {})
    for bad in (np.zeros((64, 64)), np.full((64, 64), 3.0), np.where(rng.random((64, 64)) > 0.5, np.nan, 1.0)):
        assert compare(varied, Maps(bad, np.abs(bad), {})) is None
        assert compare(Maps(bad, np.abs(bad), {}), Maps(bad, np.abs(bad), {})) is None  # two equal zero maps too
    same = compare(varied, varied)
    assert same == pytest.approx({"spearman": 1.0, "spearman_signed": 1.0, "ssim": 1.0, "hog": 1.0})
    flipped = compare(varied, Maps(-varied.signed, varied.shown.max() - varied.shown, {}))
    assert flipped["spearman"] == pytest.approx(-1.0) and flipped["spearman_signed"] == pytest.approx(-1.0)
    figures, degenerate = summarize([None, None, same, None])
    assert figures is None and degenerate == 3
    figures, degenerate = summarize([same, flipped, same, None])
    assert degenerate == 1 and figures["spearman"]["median"] == 1.0 and figures["spearman"]["low"] == -1.0


def _cascade(medians: list[float | None], width: float = 0.05) -> list[dict]:
    return [{"randomized": f"g{n}", "figures": None if m is None else {
        "spearman": {"median": m, "low": m - width, "high": m + width}}} for n, m in enumerate(medians)]


def test_the_criterion_reads_the_top_layers_against_the_control() -> None:
    """`app.core.verdicts.judge` on hand-made cascades of six groups (the judged step is the second)."""
    control = _cascade([0.9, 0.85, 0.8, 0.7, 0.5, 0.1])
    assert judged_step(6) == 2 and judged_step(13) == 5 and judged_step(1) == 1
    assert judge("gradient", _cascade([0.3, 0.2, 0.1, 0.1, 0.1, 0.0]), control).passes is True
    # Integrated gradients' pattern on InceptionV1: alike through the top layers, decorrelated only at the end.
    late = judge("integrated_gradients", _cascade([0.7, 0.6, 0.55, 0.5, 0.3, 0.2]), control)
    assert late.passes is False and "treat with care" in late.text
    # Below 0.5 but inside the control's interval: not told apart from it.
    assert judge("gradient", _cascade([0.44, 0.44, 0.1, 0.1, 0.1, 0.1]), _cascade([0.6, 0.55, 0.1, 0, 0, 0], 0.1)).passes is False
    wide = judge("grad_cam", _cascade([0.3, 0.35, 0.1, 0.1, 0.1, 0.1], width=0.3), control)  # [0.05, 0.65]
    assert wide.passes is None and "straddles" in wide.text
    degenerate = judge("grad_cam", _cascade([0.3, None, 0.1, 0.1, 0.1, 0.1]), control)
    assert degenerate.passes is None and "constant or non-finite" in degenerate.text
    assert judge("gradient", _cascade([0.3, 0.2, 0.1, 0.1, 0.1, 0.1]), None).passes is None
    blind = judge("gradient", _cascade([0.3, 0.2, 0.1, 0.1, 0.1, 0.1]), _cascade([0.3, 0.2, 0.1, 0.1, 0.1, 0.1]))
    assert blind.passes is None and "cannot tell methods apart" in blind.text
    assert judge("guided_backprop", control, control).passes is False  # the control stays alike: as published
    assert judge("guided_grad_cam", _cascade([0.6, 0.45, 0.1, 0, 0, 0], 0.2), control).passes is None


def test_guided_backprop_reaches_functional_relus_of_a_traced_network(tmp_path: Path) -> None:
    """A network written with ``F.relu`` gets ReLU modules in its traced graph, so guided backprop's rule applies:
    its map equals the gradient with every ReLU's backward signal rectified, computed here by hand."""
    from torch import nn
    from torch.nn import functional as F

    from precompute.models.traced import Description, TracedNetwork

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
            self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
            self.fc = nn.Linear(6, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.conv2(F.relu(self.conv1(x))))
            return self.fc(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    module = Functional()
    net = TracedNetwork(module, Description("functional", input_size=32, classes="none")).eval()
    image = torch.rand(3, 32, 32)
    guided = attribute_maps(net, image, Target(net.logits_layer.name, 2), "guided_backprop").signed
    plain = attribute_maps(net, image, Target(net.logits_layer.name, 2), "gradient").signed

    class Guided(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # noqa: ANN001, ANN205
            ctx.save_for_backward(x)
            return x.clamp(min=0)

        @staticmethod
        def backward(ctx, grad):  # noqa: ANN001, ANN205
            (x,) = ctx.saved_tensors
            return grad.clamp(min=0) * (x > 0)

    inputs = image[None].clone().requires_grad_(True)
    x = net.preprocess(inputs)
    out = module.fc(Guided.apply(module.conv2(Guided.apply(module.conv1(x)))).mean(dim=(2, 3)))[0, 2]
    (by_hand,) = torch.autograd.grad(out, inputs)
    assert np.allclose(guided, by_hand[0].sum(0).numpy(), atol=1e-7)
    assert not np.allclose(guided, plain, atol=1e-6)


def test_probe_maps_with_their_randomization_verdicts(client: TestClient, live: Settings, spec, net,  # noqa: ANN001
                                                      tiny_images: Path) -> None:
    probe_id = client.post(urls.probes(MODEL), content=jpeg(tiny_images, 2), headers=JPEG).json()["id"]
    with Store.open(live) as store:
        worker(store, live, spec, net).run(until_idle=True)
    result = client.get(urls.probe(MODEL, probe_id, json=True)).json()
    first = result["attributions"][0]
    assert first["kind"] == "class" and first["unit"]["index"] == result["classes"][0]["index"]
    assert [m["method"] for m in first["maps"]] == ["gradient", "integrated_gradients", "grad_cam"]
    assert all(m["verdict"]["passes"] is None and "not measured" in m["verdict"]["text"] for m in first["maps"])
    assert result["attributions"][1]["kind"] == "unit"
    ablated = result["layers"][-1]["ablated_classes"]  # the classes without the last layer's top units
    assert len(ablated) == 5 and ablated != result["classes"]
    page = client.get(urls.probe(MODEL, probe_id)).text
    assert "microscope precompute sanity" in page and "What in the image drove it" in page
    # The test on the model: its table and plot on the model page, its words beside the maps it measured, and only
    # those: the class maps of the methods it ran (Grad-CAM at the layer it used), not the unit's maps.
    with Store.open(live) as store:
        run_sanity(Stage(store, net, "w", torch.device("cpu"), progress=False), tiny_images,
                   SanityConfig(images=3, methods=("gradient", "grad_cam", "guided_backprop")))
    model = client.get(urls.model(MODEL, json=True)).json()
    assert [row["method"] for row in model["sanity"]] == ["gradient", "grad_cam", "guided_backprop"]
    assert model["sanity_command"] is None and model["sanity_plot_url"] == urls.sanity_plot(MODEL)
    row = model["sanity"][0]
    assert row["target"] == "class" and len(row["steps"]) == len(weight_groups(net)) and row["judged_step"] == 2
    assert set(row["steps"][0]["figures"]) == {"spearman", "spearman_signed", "ssim", "hog"}
    assert row["steps"][0]["images"] == 3 and model["sanity"][1]["at"] == "res2" and model["sanity"][2]["control"]
    assert 'id="sanity"' in client.get(urls.model(MODEL)).text and urls.methods(key="sanity") in client.get(urls.model(MODEL)).text
    plot = client.get(urls.sanity_plot(MODEL))
    assert plot.status_code == 200 and plot.headers["content-type"].startswith("image/svg") and b"gradient" in plot.content
    assert client.get(urls.sanity_plot("nomodel")).status_code == 404
    targets = client.get(urls.probe(MODEL, probe_id, json=True)).json()["attributions"]
    said = {m["method"]: m["verdict"] for m in targets[0]["maps"]}
    assert said["gradient"] == {**said["gradient"], "text": model["sanity"][0]["verdict"]["text"]}
    assert said["gradient"]["url"] == urls.model(MODEL) + "#sanity"
    assert said["integrated_gradients"]["passes"] is None and "not measured" in said["integrated_gradients"]["text"]
    assert targets[1]["kind"] == "unit"
    assert all(m["verdict"]["passes"] is None and "--targets unit" in m["verdict"]["text"] for m in targets[1]["maps"])
    # Another class on demand, then Grad-CAM of it at a chosen layer (the page's form).
    other = result["classes"][1]["index"]
    logits = next(layer["name"] for layer in client.get(urls.model(MODEL, json=True)).json()["layers"] if layer["kind"] == "logits")
    url = urls.probe_attribution(MODEL, probe_id, logits, other)
    assert client.post(url + ".json", headers={"origin": "https://elsewhere.example"}).status_code == 403
    assert client.post(urls.probe_attribution(MODEL, probe_id, logits, 999, True)).status_code == 404  # not a top class
    assert client.post(urls.probe_attribution(MODEL, probe_id, "nolayer", 0, True)).status_code == 404
    asked = client.post(url + ".json")
    assert asked.status_code == 202 and asked.json()["state"] == "queued"
    with Store.open(live) as store:
        assert worker(store, live, spec, net).run(until_idle=True).failed == 0
    made = client.get(url + ".json").json()
    assert made["state"] == "done" and len(made["maps"]) == 3
    cam = client.post(url, data={"at": "mixed"})
    assert cam.status_code == 202
    with Store.open(live) as store:
        assert worker(store, live, spec, net).run(until_idle=True).failed == 0
    maps = client.get(url + ".json").json()["maps"]
    assert [m["at"] for m in maps if m["method"] == "grad_cam"] == ["res2", "mixed"]
    assert "not measured at mixed" in maps[-1]["verdict"]["text"]  # Grad-CAM was tested at res2 only
    for m in maps:
        picture = client.get(m["heatmap_url"])
        assert picture.status_code == 200 and picture.headers["cache-control"] == "private, no-store"


@pytest.fixture
def live(tiny_unrendered: Settings, tmp_path: Path) -> Settings:
    return copy_store(tiny_unrendered, tmp_path / "live")


@pytest.fixture
def client(live: Settings) -> TestClient:
    return TestClient(create_app(live))


@pytest.fixture
def spec(tiny_net):  # noqa: ANN001, ANN201
    return tiny_net.spec


@pytest.fixture
def net(tiny_net):  # noqa: ANN001, ANN201
    return tiny_net


# Ablation ------------------------------------------------------------------------------------------


def test_ablating_a_unit_the_classifier_reads_changes_the_logits_by_its_contribution(tiny_net, tiny_images: Path) -> None:  # noqa: ANN001
    """The classifier reads res2's units averaged over positions: without unit u the logits lose exactly
    W[:, u] times its mean activation (and, by mean, gain W[:, u] times the dataset mean less the image's)."""
    from precompute.live.ablation import editor

    x = torch.stack(_images(tiny_images, tiny_net.spec, 3))
    weight = tiny_net.module.fc.weight.detach()
    with torch.no_grad():
        logits = tiny_net.logits(x)
        pooled = tiny_net(x, ["res2"])["res2"].clamp(min=0).mean(dim=(2, 3))
        zeroed = tiny_net.spliced("res2", editor("zero", [5]))(x)
        means = torch.full((16,), 0.25)  # every channel's mean (only the ablated ones are read)
        means[0] = 7.0
        meaned = tiny_net.spliced("res2", editor("mean", [5, 9], means=means))(x)
    assert torch.allclose(zeroed - logits, -pooled[:, 5:6] * weight[:, 5], atol=1e-5)
    expected = (0.25 - pooled[:, 5:6]) * weight[:, 5] + (0.25 - pooled[:, 9:10]) * weight[:, 9]
    assert torch.allclose(meaned - logits, expected, atol=1e-5)
    with pytest.raises(Exception, match="choose from zero, mean"):
        editor("half", [1])


def test_a_unit_ablation_from_its_page_to_its_figures(client: TestClient, live: Settings, spec, net,  # noqa: ANN001
                                                       tiny_images: Path, tmp_path: Path) -> None:
    import shutil

    from sqlalchemy import update

    from app.core.store import Dataset
    from precompute.live.ablation import AblationTarget, run_ablation, target_of

    labelled = tmp_path / "labelled"  # the synthetic images under real synsets of the tiny model's classes
    for number, file in enumerate(sorted(tiny_images.glob("*/*.jpg"))[:12]):
        folder = labelled / spec.classes[number % 4].synset
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(file, folder / file.name)
    with Store.open(live) as store:
        with store.transaction() as session:
            session.execute(update(Dataset).values(root=str(labelled)))
        stage = Stage(store, net, "w", torch.device("cpu"), progress=False)
        with pytest.raises(Exception, match="has no curves tuning"):
            target_of(store, spec, "family:curves:res1:10")
        with pytest.raises(Exception, match="not an ablation target"):
            target_of(store, spec, "units:res1:one")
        with pytest.raises(Exception, match="units 0-"):
            run_ablation(stage, labelled, AblationTarget("units:res1:99", "res1", (99,)))
    page = client.get(urls.unit(MODEL, "res2", 5, json=True)).json()
    assert page["ablation"]["runs"][0]["state"] == "none" and page["ablation"]["key"] == "units:res2:5"
    assert "measure it over the dataset" in client.get(urls.unit(MODEL, "res2", 5)).text
    url = urls.unit_ablation(MODEL, "res2", 5)
    assert client.post(url + ".json?mode=half").status_code == 400
    assert client.post(urls.unit_ablation(MODEL, "res2", 99, True)).status_code == 404
    assert client.post(url + ".json", headers={"origin": "https://elsewhere.example"}).status_code == 403
    asked = client.post(url + ".json?mode=zero")
    assert asked.status_code == 202 and asked.json()["runs"][0]["state"] == "queued"
    with Store.open(live) as store:
        assert worker(store, live, spec, net).run(until_idle=True).failed == 0
    done = client.get(url + ".json").json()["runs"][0]
    assert done["state"] == "done" and done["figures"]["images"] == 12
    figures = done["figures"]
    # The same figures computed here: the 12 images through the network with res2:5 zeroed where the next layers
    # read it, against their folders' classes.
    from precompute.live.ablation import editor

    files = list_images(labelled)
    frame, synsets = input_transform(spec), [label.synset for label in spec.classes]
    with torch.no_grad():
        logits = net.spliced("res2", editor("zero", [5]))(torch.stack([frame(load_rgb(f)) for f in files]))
    truth = torch.tensor([synsets.index(f.path.split("/")[0]) for f in files])
    top5 = logits.topk(5, dim=1).indices
    assert figures["ablated_top1"] == pytest.approx(float((top5[:, 0] == truth).float().mean()), abs=1e-4)
    assert figures["ablated_top5"] == pytest.approx(float((top5 == truth[:, None]).any(dim=1).float().mean()), abs=1e-4)
    assert len(figures["classes"]) == 4
    assert client.post(url + ".json?mode=zero").status_code == 200  # stored: not queued again
    with Store.open(live) as store:  # the same recipe again: reused, not recomputed
        assert run_ablation(Stage(store, net, "w", torch.device("cpu"), progress=False), labelled,
                            target_of(store, spec, "units:res2:5")).reused


# Caricatures ---------------------------------------------------------------------------------------


def test_dot_compare_is_lucids_formula() -> None:
    """Lucid's recipe (lucid/recipes/caricature.py) in numpy: dot = sum(a_image * a_optimized), cossim = max(0.1,
    dot / (1e-6 + |a_optimized|)), objective dot * cossim ** cossim_pow; by default cossim_pow = 0 (the dot alone)."""
    from precompute.live.caricature import COSSIM_POW, dot_compare, lucid_transforms

    rng = np.random.default_rng(3)
    optimized, target = rng.random((2, 5, 4, 4)).astype(np.float32), rng.random((2, 5, 4, 4)).astype(np.float32)
    target[1] *= -1  # a negative dot product: the cosine is clamped at 0.1

    def lucid(a_optimized: np.ndarray, a_image: np.ndarray, cossim_pow: float) -> float:
        dot = float((a_image.astype(np.float64) * a_optimized).sum())
        cossim = max(0.1, dot / (1e-6 + np.sqrt((a_optimized.astype(np.float64) ** 2).sum())))
        return dot * cossim ** cossim_pow

    assert COSSIM_POW == 0.0
    for power in (COSSIM_POW, 0.5, 1.0, 2.0):
        ours = dot_compare(torch.from_numpy(optimized), torch.from_numpy(target), power).numpy()
        assert ours == pytest.approx([lucid(optimized[b], target[b], power) for b in range(2)], rel=1e-5), power
    assert dot_compare(torch.from_numpy(optimized), torch.from_numpy(target)).numpy() == pytest.approx(
        (optimized * target).reshape(2, -1).sum(axis=1), rel=1e-5)
    # Lucid's standard transforms then crop_or_pad_to(224): a 224 px image is seen on a 224 px canvas at scale 1.
    transforms = lucid_transforms(224)
    image = torch.rand(1, 3, 224, 224)
    assert transforms.canvas(224) == 224 and torch.allclose(transforms.centered(image), image, atol=1e-4)


def test_a_probes_caricature_matches_its_activations_better_than_where_it_started(
        client: TestClient, live: Settings, spec, net, tiny_images: Path) -> None:  # noqa: ANN001
    from precompute.live.caricature import caricature
    from precompute.running.recipes import Defaults

    image = _images(tiny_images, spec, 1)[0]
    result, end, start = caricature(net, image, "mixed", 32, 24, seed=1)
    assert result.shape == (3, 32, 32) and end > 1.2 * start
    probe_id = client.post(urls.probes(MODEL), content=jpeg(tiny_images, 4), headers=JPEG).json()["id"]
    with Store.open(live) as store:
        worker(store, live, spec, net).run(until_idle=True)
    layer = client.get(urls.probe(MODEL, probe_id, json=True)).json()["layers"][1]
    assert layer["caricature"]["state"] == "none" and layer["caricature"]["picture"] == "caricature"
    url = layer["caricature"]["status_url"]
    assert 'Make its caricature' in client.get(urls.probe(MODEL, probe_id)).text
    assert client.post(urls.probe_caricature(MODEL, probe_id, "nolayer", True)).status_code == 404
    assert client.post(url + ".json").status_code == 202
    with Store.open(live) as store:
        assert worker(store, live, spec, net, defaults=Defaults(steps=24, early_steps=24, size=32)).run(
            until_idle=True).failed == 0
    done = client.get(url + ".json").json()
    assert done["state"] == "rendered" and done["recipe"]["technique"] == "caricature"
    assert done["objective"] > done["recipe"]["start_objective"]
    assert done["recipe"]["cossim_pow"] == 0 and done["recipe"]["size"] == spec.input_size
    assert done["recipe"]["transforms"]["crop_to"] == spec.input_size
    assert client.get(done["image_url"]).headers["cache-control"] == "private, no-store"


def test_which_units_of_the_layer_before_made_a_probes_units(client: TestClient, live: Settings, spec, net,  # noqa: ANN001
                                                              tiny_images: Path) -> None:
    """Building Blocks' spatial attribution: activation times gradient at the layer before, per unit and position."""
    from precompute.methods.attribution import contributions

    image = _images(tiny_images, spec, 1)[0]
    before, found = contributions(net, image, [Target("res1", 3, 2, 2), Target("res1", 7, 5, 1)])
    assert before == "mixed" and len(found) == 2 and found[0] != found[1]
    for listed in found:
        shares = [c["share"] for c in listed]
        assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.0001 and len(listed) <= 5
    # The same by hand for the first: activation times gradient of res1:3 at (2, 2) over mixed's output.
    kept = {}
    forward = net.spliced("mixed", lambda out: kept.setdefault("a", out.detach().requires_grad_(True)), "res1")
    value = forward(image[None])[0, 3, 2, 2]
    (gradient,) = torch.autograd.grad(value, kept["a"])
    per_unit = (gradient * kept["a"]).clamp(min=0)[0].flatten(1).sum(dim=1)
    assert found[0][0]["unit"] == int(per_unit.argmax())
    assert found[0][0]["share"] == pytest.approx(float(per_unit.max() / per_unit.sum()), abs=1e-3)

    probe_id = client.post(urls.probes(MODEL), content=jpeg(tiny_images, 6), headers=JPEG).json()["id"]
    with Store.open(live) as store:
        worker(store, live, spec, net).run(until_idle=True)
    layers = client.get(urls.probe(MODEL, probe_id, json=True)).json()["layers"]
    assert layers[0]["contributions"] is None  # the first layer has none before it
    status = layers[2]["contributions"]
    assert status["state"] == "none" and all(unit["contributions"] is None for unit in layers[2]["units"])
    assert client.post(urls.probe_contributions(MODEL, probe_id, layers[0]["name"], True)).status_code == 404
    assert client.post(status["url"] + ".json").status_code == 202
    with Store.open(live) as store:
        assert worker(store, live, spec, net).run(until_idle=True).failed == 0
    assert client.get(status["url"], headers={"hx-request": "true"}).headers.get("HX-Refresh") == "true"
    units = client.get(urls.probe(MODEL, probe_id, json=True)).json()["layers"][2]["units"]
    assert all(unit["contributions"] and unit["contributions"][0]["unit"]["layer"] == layers[1]["name"] for unit in units)
    assert 'class="contributors"' in client.get(urls.probe(MODEL, probe_id)).text


def test_a_probe_layers_top_units_ablated_together_over_the_dataset(client: TestClient, live: Settings, spec, net,  # noqa: ANN001
                                                                     tiny_images: Path, tmp_path: Path) -> None:
    import shutil

    from sqlalchemy import update

    from app.core.store import Dataset

    labelled = tmp_path / "labelled"
    for number, file in enumerate(sorted(tiny_images.glob("*/*.jpg"))[:8]):
        folder = labelled / spec.classes[number % 3].synset
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(file, folder / file.name)
    with Store.open(live) as store, store.transaction() as session:
        session.execute(update(Dataset).values(root=str(labelled)))
    probe_id = client.post(urls.probes(MODEL), content=jpeg(tiny_images, 9), headers=JPEG).json()["id"]
    with Store.open(live) as store:
        worker(store, live, spec, net).run(until_idle=True)
    layer = client.get(urls.probe(MODEL, probe_id, json=True)).json()["layers"][2]
    units = [unit["unit"]["index"] for unit in layer["units"]]
    url = urls.units_ablation(MODEL, layer["name"], units)
    assert url in client.get(urls.probe(MODEL, probe_id)).text.replace("&amp;", "&")
    for wrong in ("1,x", "", ",".join(str(u) for u in range(70)), "999", "1,,2"):
        answer = client.post(urls.units_ablation(MODEL, layer["name"], [], True).replace("units=", f"units={wrong}"))
        assert answer.status_code in (400, 404, 422), wrong
    json_url = urls.units_ablation(MODEL, layer["name"], units, True)
    asked = client.post(json_url + "&mode=zero")
    assert asked.status_code == 202 and asked.json()["key"] == f"units:{layer['name']}:{','.join(map(str, sorted(units)))}"
    with Store.open(live) as store:
        assert worker(store, live, spec, net).run(until_idle=True).failed == 0
    done = client.get(json_url).json()["runs"][0]
    assert done["state"] == "done" and done["figures"]["images"] == 8


def test_the_methods_page_names_tests_that_exist(client: TestClient) -> None:
    """Every method's entry names its reference and the tests that check it; each named test exists, so an entry
    cannot outlive its test."""
    import ast

    from app.methods import METHODS

    root = Path(__file__).resolve().parent.parent
    for method in METHODS:
        assert method.paper and method.code and method.parameters and method.deviations and method.tests, method.key
        for named in method.tests:
            path, name = named.split("::")
            tree = ast.parse((root / path).read_text(encoding="utf-8"))
            assert name in {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}, named
    page = client.get(urls.methods(json=True)).json()
    assert [m["key"] for m in page["methods"]] == [m.key for m in METHODS]
    html = client.get(urls.methods()).text
    assert 'id="sanity"' in html and "adebayoj/sanity_checks_saliency" in html


def test_every_figure_links_to_an_entry_of_the_methods_page() -> None:
    """Each link a template makes to a method's entry names one that exists, and every section that shows a method's
    figure (renders, labels, tuning, factors, attribution, caricature, groups, sanity, modules, matches) links to one."""
    import re

    from app.methods import METHODS

    keys = {method.key for method in METHODS}
    linked: dict[str, set[str]] = {}
    for template in (Path(__file__).resolve().parent.parent / "templates").glob("*.html"):
        found = set(re.findall(r"urls\.methods\(key='([a-z-]+)'\)", template.read_text(encoding="utf-8")))
        linked[template.name] = found
        assert found <= keys, (template.name, found - keys)
    assert {"feature-visualization", "labels", "tuning", "universality"} <= linked["unit.html"]
    assert {"attribution", "caricature", "nmf"} <= linked["probe.html"]
    assert "sanity" in linked["model.html"] and "modularity" in linked["layer.html"]
