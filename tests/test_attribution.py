"""Attribution (issue 23): Captum's maps on the tiny models, the randomization test, and the probe page around them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app import urls
from app.main import create_app
from app.settings import Settings
from app.store import Store
from precompute.attribution import Target, attribute, cascading_randomization, randomized, similarity, weight_groups
from precompute.examples import input_transform
from precompute.images import list_images, load_rgb
from precompute.models import load, seeded_state_dict
from precompute.sanity import SanityConfig, run_sanity
from precompute.stage import Stage
from tests.test_live import JPEG, MODEL, copy_store, jpeg, worker

DETECTORS = "tests.tiny_model:detectors"


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
    assert values.shape == image.shape[1:] and (values >= 0).all() and params["change"] != 0
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
    cam, params = attribute(tiny_net, image, Target(logits, 7), "grad_cam")
    assert cam.shape == image.shape[1:] and (cam >= 0).all() and params["layer"] == "res2"  # the last conv layer
    at, params = attribute(tiny_net, image, Target(logits, 7), "grad_cam", cam_layer="mixed")
    assert params["layer"] == "mixed" and not np.allclose(at, cam)
    unit, params = attribute(tiny_net, image, Target("res1", 2, 1, 1), "grad_cam")
    assert params["layer"] == "mixed" and unit.shape == image.shape[1:]  # a unit's: the main layer before its own
    with pytest.raises(Exception, match="needs a layer before"):
        attribute(tiny_net, image, Target("mixed", 2, 1, 1), "grad_cam", cam_layer="res1")


def test_the_randomization_test_decorrelates_the_gradient_maps(tiny_net, tiny_images: Path) -> None:  # noqa: ANN001
    images = _images(tiny_images, tiny_net.spec, 4)
    logits = tiny_net.logits_layer.name
    groups = [name for name, _ in weight_groups(tiny_net)]
    assert groups == ["fc", "res2", "res1", "mixed", "stem"]  # the top-level modules, from the top down
    real, _ = attribute(tiny_net, images[0], Target(logits, 1), "gradient")
    with randomized(tiny_net, 0) as same:
        copy, _ = attribute(same, images[0], Target(logits, 1), "gradient")
    assert similarity(real, copy) == pytest.approx((1.0, 1.0))  # nothing randomized: the same map
    cascade = cascading_randomization(tiny_net, images, ("gradient",))["gradient"]
    assert [step["randomized"] for step in cascade] == groups and len(cascade[0]["spearman"]) == 4
    assert np.median(cascade[-1]["spearman"]) < 0.5  # every weight random: the map no longer follows the model
    again, _ = attribute(tiny_net, images[0], Target(logits, 1), "gradient")
    assert np.array_equal(again, real)  # the real network is left as it was


def test_probe_maps_with_their_randomization_verdicts(client: TestClient, live: Settings, spec, net,  # noqa: ANN001
                                                      tiny_images: Path) -> None:
    probe_id = client.post(urls.probes(MODEL), content=jpeg(tiny_images, 2), headers=JPEG).json()["id"]
    with Store.open(live) as store:
        worker(store, live, spec, net).run(until_idle=True)
    result = client.get(urls.probe(MODEL, probe_id, json=True)).json()
    first = result["attributions"][0]
    assert first["kind"] == "class" and first["unit"]["index"] == result["classes"][0]["index"]
    assert [m["method"] for m in first["maps"]] == ["gradient", "integrated_gradients", "grad_cam"]
    assert all(m["verdict"]["passes"] is None and "not tested" in m["verdict"]["text"] for m in first["maps"])
    assert result["attributions"][1]["kind"] == "unit"
    ablated = result["layers"][-1]["ablated_classes"]  # the classes without the last layer's top units
    assert len(ablated) == 5 and ablated != result["classes"]
    page = client.get(urls.probe(MODEL, probe_id)).text
    assert "microscope precompute sanity" in page and "What in the image drove it" in page
    # The test on the model: its table on the model page, its words beside every map.
    with Store.open(live) as store:
        run_sanity(Stage(store, net, "w", torch.device("cpu"), progress=False), tiny_images,
                   SanityConfig(images=3, methods=("gradient", "grad_cam")))
    model = client.get(urls.model(MODEL, json=True)).json()
    assert [row["method"] for row in model["sanity"]] == ["grad_cam", "gradient"] and model["sanity_command"] is None
    assert len(model["sanity"][0]["steps"]) == len(weight_groups(net))
    assert 'id="sanity"' in client.get(urls.model(MODEL)).text
    said = {m["method"]: m["verdict"] for m in client.get(urls.probe(MODEL, probe_id, json=True)).json()["attributions"][0]["maps"]}
    assert said["gradient"]["passes"] is not None and said["integrated_gradients"]["passes"] is None
    assert said["gradient"]["url"] == urls.model(MODEL) + "#sanity"
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
    from precompute.ablation import editor

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

    from app.store import Dataset
    from precompute.ablation import AblationTarget, run_ablation, target_of

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
    assert 0 <= figures["ablated_top1"] <= figures["ablated_top5"] <= 1 and len(figures["classes"]) == 4
    assert client.post(url + ".json?mode=zero").status_code == 200  # stored: not queued again
    with Store.open(live) as store:  # the same recipe again: reused, not recomputed
        assert run_ablation(Stage(store, net, "w", torch.device("cpu"), progress=False), labelled,
                            target_of(store, spec, "units:res2:5")).reused


# Caricatures ---------------------------------------------------------------------------------------


def test_a_probes_caricature_matches_its_activations_better_than_where_it_started(
        client: TestClient, live: Settings, spec, net, tiny_images: Path) -> None:  # noqa: ANN001
    from precompute.caricature import caricature
    from precompute.recipes import Defaults

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
    assert client.get(done["image_url"]).headers["cache-control"] == "private, no-store"


def test_which_units_of_the_layer_before_made_a_probes_units(client: TestClient, live: Settings, spec, net,  # noqa: ANN001
                                                              tiny_images: Path) -> None:
    """Building Blocks' spatial attribution: activation times gradient at the layer before, per unit and position."""
    from precompute.attribution import contributions

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

    from app.store import Dataset

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
