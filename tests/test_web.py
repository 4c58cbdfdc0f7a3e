"""The web server over a small real store: every page and its JSON twin, errors, blobs, search."""

from __future__ import annotations

import io
import math
import re
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app import urls
from app.main import create_app
from app.core.settings import Settings
from app.core.store import Store
from app.core.zoo import ModelSpec
from tests.support.cli import microscope


@pytest.fixture
def store_settings(web_settings: Settings) -> Settings:
    """The session's web store; the server opens it read-only, so no test can change it for another."""
    return web_settings


@pytest.fixture
def client(store_settings: Settings) -> Iterator[httpx.Client]:
    """An httpx client driving the app in-process (Starlette's TestClient is an ``httpx.Client``)."""
    with TestClient(create_app(store_settings), base_url="http://microscope", follow_redirects=False) as client:
        yield client


def _both(client: httpx.Client, html_url: str, json_url: str) -> tuple[httpx.Response, dict]:
    page = client.get(html_url)
    twin = client.get(json_url)
    assert page.status_code == 200 and twin.status_code == 200, (page.text[:300], twin.text[:300])
    assert page.headers["content-type"].startswith("text/html") and "<html" in page.text
    assert "HX-Request" in page.headers["vary"]
    return page, twin.json()


def test_index_lists_models_with_coverage(client: httpx.Client) -> None:
    page, data = _both(client, urls.home(), urls.home(json=True))
    (model,) = data["models"]
    assert model["name"] == "inceptionv1_caffe" and model["units"] == 13768 and model["rendered_units"] == 8
    assert f'href="{urls.model("inceptionv1_caffe")}"' in page.text


def test_model_page_lists_layers_in_network_order(client: httpx.Client) -> None:
    page, data = _both(client, urls.model("inceptionv1_caffe"), urls.model("inceptionv1_caffe", json=True))
    names = [layer["name"] for layer in data["layers"]]
    assert names[:3] == ["conv2d0", "conv2d1", "conv2d2"] and names[-1] == "softmax2" and len(names) == 67
    mixed3b = data["layers"][names.index("mixed3b")]
    assert mixed3b["rendered"]["channel"] == 4 and mixed3b["with_examples"] == 480 and mixed3b["with_circuits"] == 480
    assert len(mixed3b["strip"]) == 4 and all(unit["image_url"] for unit in mixed3b["strip"])
    assert "mixed3a_5x5_bottleneck" in page.text and mixed3b["strip"][0]["image_url"] in page.text


def test_layer_page_pages_units_and_htmx_appends(client: httpx.Client) -> None:
    page, data = _both(client, urls.layer("inceptionv1_caffe", "mixed3b"), urls.layer("inceptionv1_caffe", "mixed3b", json=True))
    assert [unit["index"] for unit in data["units"]] == list(range(96)) and data["pages"] == 5
    assert data["units"][0]["image_url"] and data["units"][10]["image_url"] is None
    assert data["next_url"] == urls.layer("inceptionv1_caffe", "mixed3b", 2)
    fragment = client.get(data["next_url"], headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert fragment.text.count('class="tile"') == 96 and 'hx-get="/models/inceptionv1_caffe/mixed3b?page=3"' in fragment.text
    last = client.get(urls.layer("inceptionv1_caffe", "mixed3b", 5, json=True)).json()
    assert [u["index"] for u in last["units"]][-1] == 479 and last["next_url"] is None


def test_unit_page_shows_visualizations_examples_and_circuit(client: httpx.Client) -> None:
    page, data = _both(client, urls.unit("inceptionv1_caffe", "mixed3b", 0), urls.unit("inceptionv1_caffe", "mixed3b", 0, json=True))
    assert [v["technique"] for v in data["visualizations"]] == ["channel", "neuron", "negative", "diversity"]
    assert data["visualizations"][0]["recipe"]["steps"] == 2
    assert len(data["top_examples"]) == 4 and len(data["bottom_examples"]) == 4
    assert data["top_examples"][0]["activation"] >= data["top_examples"][-1]["activation"]
    assert data["bottom_examples"][0]["activation"] <= data["bottom_examples"][-1]["activation"]
    assert data["stats"]["images"] == 24 and sum(data["stats"]["histogram"]) == 24
    assert [(group["layer"], group["kind"]) for group in data["inputs"]] == [("mixed3a", "direct"), ("conv2d2", "indirect")]
    assert [group["layer"] for group in data["outputs"]] == ["mixed4a"]
    group = data["inputs"][0]
    inputs = group["edges"]
    assert group["total"] >= 50 and len(inputs) == 6 and group["more_url"] and group["note"] is None
    assert {edge["kind"] for edge in inputs} == {"direct"}  # unit 0 is in the 1x1 branch
    assert [edge["norm"] for edge in inputs] == sorted((edge["norm"] for edge in inputs), reverse=True)
    spatial = client.get(urls.unit("inceptionv1_caffe", "mixed3b", 200, json=True)).json()["inputs"][0]["edges"]
    assert {edge["kind"] for edge in spatial} == {"expanded"} and len(spatial[0]["kernel"]) == 3
    assert inputs[0]["kernel_url"].startswith("/blobs/")
    indirect = data["inputs"][1]
    assert "local response normalization" in indirect["note"] and indirect["edges"][0]["kernel_url"] is None
    assert data["same_unit"]["layer"] == "mixed3b_1x1" and data["same_unit"]["index"] == 0
    assert data["previous_url"] is None and data["next_url"] == urls.unit("inceptionv1_caffe", "mixed3b", 1)
    assert data["missing"] == []
    for edge in inputs[:3]:
        assert f'href="{edge["unit"]["url"]}"' in page.text
    assert data["top_examples"][0]["crop_url"] in page.text


def test_units_not_rendered_stand_as_their_top_example_marked(client: httpx.Client) -> None:
    """Circuits and grids are readable before renders exist: the top example's crop, marked as such."""
    group = client.get(urls.unit("inceptionv1_caffe", "mixed3b", 0, json=True)).json()["inputs"][0]
    full = client.get(urls.connections("inceptionv1_caffe", "mixed3b", 0, "inputs", "mixed3a", json=True)).json()["group"]
    rendered = [edge["unit"] for edge in full["edges"] if edge["unit"]["index"] < 4]
    waiting = [edge["unit"] for edge in full["edges"] if edge["unit"]["index"] >= 4]
    assert waiting and all(unit["image_url"] is None and unit["placeholder_url"].startswith("/blobs/") for unit in waiting)
    assert all(unit["image_url"] and unit["placeholder_url"] is None for unit in rendered)
    top = client.get(urls.unit("inceptionv1_caffe", "mixed3a", waiting[0]["index"], json=True)).json()["top_examples"][0]
    assert waiting[0]["placeholder_url"] == top["crop_url"]
    page = client.get(group["more_url"]).text
    assert 'class="thumb placeholder"' in page and waiting[0]["placeholder_url"] in page
    grid = client.get(urls.layer("inceptionv1_caffe", "mixed3b_3x3", json=True)).json()["units"]
    assert all(unit["image_url"] is None and unit["placeholder_url"] for unit in grid)
    assert '<span class="mark">example</span>' in client.get(urls.layer("inceptionv1_caffe", "mixed3b_3x3")).text
    bare = client.get(urls.layer("inceptionv1_caffe", "conv2d0", json=True)).json()["units"]  # no examples there
    assert all(unit["image_url"] is None and unit["placeholder_url"] is None for unit in bare)


def test_a_groups_more_loads_every_connection_strongest_first(client: httpx.Client) -> None:
    unit = client.get(urls.unit("inceptionv1_caffe", "mixed3b", 0, json=True)).json()
    group = unit["inputs"][0]
    page, data = _both(client, group["more_url"], urls.connections("inceptionv1_caffe", "mixed3b", 0, "inputs", "mixed3a", json=True))
    edges = data["group"]["edges"]
    assert len(edges) == group["total"] and data["group"]["more_url"] is None
    assert [edge["norm"] for edge in edges] == sorted((edge["norm"] for edge in edges), reverse=True)
    assert any(edge["weight"] > 0 for edge in edges) and any(edge["weight"] < 0 for edge in edges)
    fragment = client.get(group["more_url"], headers={"HX-Request": "true"})
    assert fragment.status_code == 200 and "<html" not in fragment.text and fragment.text.count("<li") == len(edges)
    assert f'hx-get="{group["more_url"]}"' in client.get(urls.unit("inceptionv1_caffe", "mixed3b", 0)).text
    assert client.get(urls.connections("inceptionv1_caffe", "mixed3b", 0, "inputs", "mixed4e")).status_code == 404
    assert client.get(urls.connections("inceptionv1_caffe", "mixed3b", 0, "sideways", "mixed3a", json=True)).status_code == 404


def test_unit_page_names_what_is_missing_and_the_command(client: httpx.Client) -> None:
    page, data = _both(client, urls.unit("inceptionv1_caffe", "mixed4c", 447), urls.unit("inceptionv1_caffe", "mixed4c", 447, json=True))
    commands = [missing["command"] for missing in data["missing"]]
    assert "microscope precompute vis --model inceptionv1_caffe --layers mixed4c --units 447 " \
           "--techniques channel,neuron,negative,diversity" in commands
    assert "microscope precompute examples --model inceptionv1_caffe --layers mixed4c" in commands
    assert all(command in page.text for command in commands)
    assert "<img" not in page.text.split("<main>")[1].split("Inputs")[0]


def test_class_units_carry_their_names(client: httpx.Client) -> None:
    _, data = _both(client, urls.unit("inceptionv1_caffe", "softmax2", 1), urls.unit("inceptionv1_caffe", "softmax2", 1, json=True))
    assert data["unit"]["label"] == "goldfish" and data["top_examples"]
    assert [group["layer"] for group in data["inputs"]] == ["mixed5b"]


def test_a_main_units_outputs_list_the_next_block_before_its_branches(client: httpx.Client) -> None:
    data = client.get(urls.unit("inceptionv1_caffe", "mixed3a", 5, json=True)).json()
    layers = [(group["layer"], group["kind"]) for group in data["outputs"]]
    assert layers[0] == ("mixed3b", "direct")
    assert set(layers) <= {("mixed3b", "direct"), ("mixed4a", "indirect"), ("mixed3b_3x3_bottleneck", "direct")}


def test_example_page_marks_the_receptive_field(client: httpx.Client) -> None:
    unit = client.get(urls.unit("inceptionv1_caffe", "mixed3a", 2, json=True)).json()
    url = unit["top_examples"][0]["url"]
    page, data = _both(client, url, url + ".json")
    left, top, width, height = data["box"]
    assert 0 <= left < 100 and 0 < width <= 100 * 59 / 224 + 0.01
    fragment = client.get(url, headers={"HX-Request": "true"})
    assert "<html" not in fragment.text and "class=\"box\"" in fragment.text


@pytest.mark.parametrize(
    ("url", "status", "suggestion"),
    [
        ("/models/inceptionv2", 404, "/models/inceptionv1_caffe"),
        ("/models/inceptionv1_caffe/mixed4x", 404, "/models/inceptionv1_caffe/mixed4c"),
        ("/models/inceptionv1_caffe/mixed4c/512", 404, "/models/inceptionv1_caffe/mixed4c"),
        ("/models/inceptionv1_caffe/mixed4c/abc", 404, "/"),
        ("/models/inceptionv1_caffe/mixed4c/-1", 404, "/"),
        ("/models/inceptionv1_caffe/mixed4c?page=0", 400, None),
        ("/models/inceptionv1_caffe/mixed4c?page=99", 404, None),
        ("/models/inceptionv1_caffe/mixed4c?page=x", 400, None),
        ("/models/inceptionv1_caffe/mixed4c/3/examples/sideways/0", 404, None),
        ("/models/inceptionv1_caffe/mixed4c/3/examples/top/99", 404, None),
        ("/nowhere/at/all", 404, "/"),
    ],
)
def test_errors_are_pages_or_json_never_500(client: httpx.Client, url: str, status: int, suggestion: str | None) -> None:
    page = client.get(url)
    assert page.status_code == status and "<html" in page.text
    path, _, query = url.partition("?")
    twin = client.get(f"{path}.json" + (f"?{query}" if query else ""))
    assert twin.status_code == status and "error" in twin.json()
    if suggestion:
        assert f'href="{suggestion}"' in page.text
        assert suggestion in [s["url"] for s in twin.json()["suggestions"]]


def test_blobs_are_immutable_and_keys_checked(client: httpx.Client) -> None:
    data = client.get(urls.unit("inceptionv1_caffe", "mixed3b", 0, json=True)).json()
    url = data["visualizations"][0]["image_url"]
    image = client.get(url)
    assert image.status_code == 200 and image.headers["content-type"] == "image/webp"
    assert "immutable" in image.headers["cache-control"] and image.headers["etag"]
    assert client.get(url, headers={"If-None-Match": image.headers["etag"]}).status_code == 304
    for bad in ("/blobs/..%2F..%2Fmicroscope.sqlite", "/blobs/" + "0" * 64 + ".webp", "/blobs/abc", "/blobs/%2e%2e"):
        assert client.get(bad).status_code == 404


@pytest.mark.parametrize(
    ("query", "target"),
    [
        ("mixed4c:447", "/models/inceptionv1_caffe/mixed4c/447"),
        ("mixed4c 447", "/models/inceptionv1_caffe/mixed4c/447"),
        ("inceptionv1_caffe mixed3a:7", "/models/inceptionv1_caffe/mixed3a/7"),
        ("goldfish", "/models/inceptionv1_caffe/softmax2/1"),
        ("Chain", "/models/inceptionv1_caffe/softmax2/488"),
        ("mixed4c", "/models/inceptionv1_caffe/mixed4c"),
    ],
)
def test_search_lands_on_the_right_page(client: httpx.Client, query: str, target: str) -> None:
    response = client.get(urls.search(query))
    assert response.status_code == 303 and response.headers["location"] == target


def test_search_lists_ambiguous_names_and_suggests_for_typos(client: httpx.Client) -> None:
    crane = client.get(urls.search("crane"))
    assert crane.status_code == 200 and crane.text.count("/models/inceptionv1_caffe/softmax2/") >= 2
    assert client.get(urls.search("crane", json=True)).json()["results"][0]["url"].startswith("/models/")
    typo = client.get(urls.search("goldfsh"))
    assert typo.status_code == 404 and "goldfish" in typo.text
    assert client.get(urls.search("mixed4c:9999")).status_code == 404
    jump = client.get("/search?q=12&model=inceptionv1_caffe&layer=mixed3b")
    assert jump.headers["location"] == "/models/inceptionv1_caffe/mixed3b/12"


def test_search_puts_whole_words_first_shows_pictures_and_pages(client: httpx.Client) -> None:
    dog = client.get(urls.search("dog", json=True)).json()
    labels = [hit["label"] for hit in dog["results"]]
    whole = [bool(re.search(r"\bdog\b", label.lower())) for label in labels]
    assert whole[0] and whole == sorted(whole, reverse=True)  # "sled dog" before "hotdog"
    assert any("hotdog" in label.lower() for label in labels)
    assert all(hit["unit"]["url"] == hit["url"] for hit in dog["results"])
    many = client.get(urls.search("e", json=True)).json()
    assert many["total"] > 50 and len(many["results"]) == 50 and many["pages"] == -(-many["total"] // 50)
    second = client.get(many["next_url"]).json()
    assert second["page"] == 2 and second["previous_url"] and second["results"][0] != many["results"][0]
    page = client.get(urls.search("e", page=2))
    assert page.status_code == 200 and 'rel="prev"' in page.text and 'class="tile"' in page.text
    assert client.get(urls.search("e", page=999)).status_code == 404


def test_search_finds_units_by_their_concept_label(web_settings: Settings) -> None:
    """A store whose unit carries a concept label: the concept (or one above it) finds it, with its score."""
    import shutil
    import tempfile

    from sqlalchemy import delete, select

    from app.core.store import Layer, Run, Store, Unit, UnitLabel
    from app.core.zoo.concepts import Hierarchy

    with tempfile.TemporaryDirectory() as folder:
        copy = Settings.load(Path(folder) / "store")
        shutil.copytree(web_settings.data_dir, copy.data_dir)
        with Store.open(copy) as store, store.transaction() as session:
            unit_id = session.scalar(select(Unit.id).join(Layer).where(Layer.name == "mixed3b", Unit.index == 5))
            run = Run(stage="labels", model_id=session.scalar(select(Layer.model_id).where(Layer.name == "mixed3b")),
                      code_version="test", params={"layer": "mixed3b"}, started_at=datetime(2026, 12, 1))
            session.add(run)
            hierarchy = Hierarchy.load()  # no other unit labelled a dog or anything under it
            dogs = [wnid for wnid in hierarchy.names if "n02084071" in hierarchy.ancestors(wnid)]
            session.execute(delete(UnitLabel).where(UnitLabel.concept.in_(dogs)))
            session.execute(delete(UnitLabel).where(UnitLabel.unit_id == unit_id))
            session.flush()
            session.add(UnitLabel(unit_id=unit_id, rank=0, concept="n02087551", name="hound", count=12, of=40,
                                  coverage=0.3, base_rate=0.019, lift=15.8, score=1.19, run_id=run.id))
        client = TestClient(create_app(copy))
        for query in ("hound", "dog", "Hunting dog"):
            found = client.get(urls.search(query, json=True)).json()["results"]
            concept = [hit for hit in found if hit["reason"] == "concept"]
            assert [hit["url"] for hit in concept] == [urls.unit("inceptionv1_caffe", "mixed3b", 5)], query
            assert concept[0]["score"] == 1.19 and "hound (12 of 40" in concept[0]["label"]
        unit = client.get(urls.unit("inceptionv1_caffe", "mixed3b", 5)).text
        assert '<strong class="concept">hound</strong> (12 of 40' in unit


def test_openapi_lists_every_json_route(client: httpx.Client) -> None:
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {"/index.json", "/models/{model}.json", "/models/{model}/{layer}.json", "/models/{model}/{layer}/{unit}.json",
            "/models/{model}/{layer}/{unit}/examples/{kind}/{rank}.json", "/search.json"} <= paths
    assert client.get("/docs").status_code == 200


def test_the_server_never_imports_torch(store_settings: Settings) -> None:
    code = (
        "import sys; from pathlib import Path; from app.main import create_app; from app.core.settings import Settings;"
        f"create_app(Settings.load(Path({str(store_settings.data_dir)!r}))); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_the_server_opens_the_store_read_only(store_settings: Settings) -> None:
    app = create_app(store_settings)
    with app.state.microscope.engine.connect() as connection, pytest.raises(Exception, match="readonly"):
        connection.exec_driver_sql("DELETE FROM units")


def test_serve_refuses_a_missing_store_in_one_line(tmp_path: Path) -> None:
    result = microscope("serve", "--data", str(tmp_path / "none"))
    assert result.returncode == 2 and "no store at" in result.stderr and not (tmp_path / "none").exists()


def test_every_link_on_a_unit_page_resolves(client: httpx.Client) -> None:
    page = client.get(urls.unit("inceptionv1_caffe", "mixed3b", 0)).text
    links = set(re.findall(r'(?:href|src|hx-get)="(/[^"]*)"', page))
    assert len(links) > 50
    for link in links:
        assert client.get(link).status_code in (200, 303), link


@pytest.mark.parametrize(
    ("link", "target"),
    [
        ("/models/inceptionv1_caffe/mixed4c_0/447", "/models/inceptionv1_caffe/mixed4c/447"),
        ("/models/inceptionv1_caffe/mixed4c_0", "/models/inceptionv1_caffe/mixed4c"),
        ("/models/inceptionv1_caffe/mixed4c_0/447?models.technique=deep_dream",
         "/models/inceptionv1_caffe/mixed4c/447#visualizations"),
        ("/models/inceptionv1_caffe/mixed4c_0/447?models.op.feature_vis.type=channel&models.technique=feature_vis",
         "/models/inceptionv1_caffe/mixed4c/447#visualizations"),
        ("/models/inceptionv1_caffe/mixed3b_0/0?models.technique=dataset_examples",
         "/models/inceptionv1_caffe/mixed3b/0#examples"),
        ("/models/inceptionv1_caffe/mixed4c_0/447.json", "/models/inceptionv1_caffe/mixed4c/447.json"),
    ],
)
def test_openai_microscope_links_land_on_the_same_unit_and_section(client: httpx.Client, link: str, target: str) -> None:
    response = client.get(link)
    assert response.status_code == 301 and response.headers["location"] == target
    landed = client.get(target.split("#")[0])
    assert landed.status_code == 200
    if "#" in target:
        assert f'id="{target.split("#")[1]}"' in landed.text


def test_a_layer_named_with_a_trailing_0_is_not_rewritten_when_it_exists(client: httpx.Client) -> None:
    assert client.get("/models/inceptionv1_caffe/nosuch_0").status_code == 404


def test_a_link_to_microscopes_inceptionv1_says_what_it_is_and_what_is_held(client: httpx.Client) -> None:
    """The BVLC network is never shown under Microscope's name: the link gets a page that says so."""
    page = client.get("/models/inceptionv1/mixed4c/447")
    assert page.status_code == 404 and "text/html" in page.headers["content-type"]
    assert "this store does not hold &#39;inceptionv1&#39;" in page.text or "does not hold 'inceptionv1'" in page.text
    assert 'href="/models/inceptionv1_caffe"' in page.text and "unit numbers do not correspond" in page.text
    assert "microscope precompute all --model inceptionv1" in page.text
    data = client.get("/models/inceptionv1/mixed4c/447.json").json()
    assert data["kind"] == "not_held" and data["name"] == "inceptionv1"
    assert data["held"][0]["name"] == "inceptionv1_caffe" and "another network" in data["held"][0]["note"]
    assert data["command"] == "microscope precompute all --model inceptionv1"
    assert client.get("/models/inceptionv1.json").json()["kind"] == "not_held"
    assert client.get("/models/nosuchnet.json").status_code == 404
    assert "kind" not in client.get("/models/nosuchnet.json").json()


def test_the_model_page_shows_the_registry_notes(tmp_path: Path) -> None:
    """A registry model with notes (SqueezeNet's logits are a pooled ReLU) shows them, in the JSON and on the page."""
    from app.core.zoo import REGISTRY
    from precompute.stages.catalog import catalog
    from precompute.models import build

    notes = list(REGISTRY["squeezenet1_1_caffe"].notes)
    assert notes
    settings = Settings.load(tmp_path / "data")
    with Store.open(settings, create=True) as store:
        catalog(store, build("squeezenet1_1_caffe").spec)
    with TestClient(create_app(settings)) as local:
        assert local.get(urls.model("squeezenet1_1_caffe", json=True)).json()["notes"] == notes
        assert "global average of conv10" in local.get(urls.model("squeezenet1_1_caffe")).text


def test_a_microscope_link_to_a_layer_that_exists_under_neither_name_is_not_redirected(client: httpx.Client) -> None:
    assert client.get("/models/inceptionv1_caffe/mixed9z_0/1").status_code == 404
    assert client.get("/models/inceptionv1_caffe/mixed9z_0").status_code == 404


def test_unit_pages_have_a_tuning_section_with_plots_stimuli_and_numbers(client: httpx.Client) -> None:
    page, data = _both(client, urls.unit("inceptionv1_caffe", "mixed3b", 0), urls.unit("inceptionv1_caffe", "mixed3b", 0, json=True))
    tuning = data["tuning"]
    assert tuning["computed"] and "counterclockwise" in tuning["conventions"]
    # A block output's unit is tuned on its branch's receptive field: unit 0 is in mixed3b_1x1, unit 400 in 5x5.
    assert tuning["placement"]["field"] == 59 and tuning["placement"]["units"] == [0, 128]
    wide = client.get(urls.unit("inceptionv1_caffe", "mixed3b", 400, json=True)).json()["tuning"]["placement"]
    assert wide["field"] == 91 and wide["units"] == [320, 416]
    by = {family["family"]: family for family in tuning["families"]}
    assert list(by) == ["curves", "lines"]
    curves = by["curves"]
    assert set(curves["preferred"]) == {"orientation", "radius", "polarity"}
    assert [axis["name"] for axis in curves["axes"]] == ["orientation", "radius", "polarity"]
    assert len(curves["responses"]) == 24 and len(curves["responses"][0]) == 4 and len(curves["responses"][0][0]) == 2
    assert {"peak_over_mean", "resultant_length", "half_width", "curve_over_line", "drive"} <= set(curves["figures"])
    assert 'id="tuning"' in page.text and curves["plot_url"] in page.text and curves["stimulus_url"] in page.text
    svg = client.get(curves["plot_url"])
    assert svg.status_code == 200 and svg.headers["content-type"] == "image/svg+xml" and b"<svg" in svg.content
    assert b"preferred" in svg.content and b"radius (receptive fields)" in svg.content  # labelled, no hovering
    again = client.get(curves["plot_url"], headers={"If-None-Match": svg.headers["etag"]})
    assert again.status_code == 304
    stimulus = client.get(curves["stimulus_url"])
    assert stimulus.headers["content-type"] == "image/png"
    picture = np.asarray(Image.open(io.BytesIO(stimulus.content)))
    assert picture.shape[:2] == (96, 96) and picture.std() > 5  # a drawn curve, not a blank
    # Joint tuning where the receptive field fits inside the input: conv2d1 has every family.
    page, data = _both(client, urls.unit("inceptionv1_caffe", "conv2d1", 3), urls.unit("inceptionv1_caffe", "conv2d1", 3, json=True))
    joint = data["tuning"]["families"]
    assert "Joint tuning" in page.text and all(f["plot_url"] in page.text for f in joint)
    assert [f["family"] for f in joint][:6] == ["curves", "lines", "edges", "gratings", "colours", "joint"]
    assert len(joint[5]["responses"]) == 24 and joint[5]["stimulus_url"] is None
    assert b"rotation of its top example" in client.get(joint[5]["plot_url"]).content
    # The curve family's joint tuning (Curve Detectors): its most curve-selective units answering rotations of the
    # most selective one's examples, each with where it should peak if the family tiles orientation.
    family = client.get(urls.tuning_family("inceptionv1_caffe", "conv2d1", "joint_curves", json=True)).json()
    curves_ranked = client.get(urls.tuning_family("inceptionv1_caffe", "conv2d1", "curves", json=True)).json()["units"]
    members = {u["unit"] for u in family["units"]}
    assert members == {u["unit"] for u in curves_ranked if u["selectivity"] > 0}.intersection(
        u["unit"] for u in curves_ranked[:10]) and len(members) == 10
    assert {u["figures"]["reference"] for u in family["units"]} == {curves_ranked[0]["unit"]}
    assert all(len(u["preferred"]) == 1 and "expected_rotation" in u["figures"] for u in family["units"])


def test_a_unit_without_tuning_says_it_is_coming_and_how(client: httpx.Client) -> None:
    page, data = _both(client, urls.unit("inceptionv1_caffe", "mixed3a", 0), urls.unit("inceptionv1_caffe", "mixed3a", 0, json=True))
    assert data["tuning"]["computed"] is False
    assert "precompute tuning --model inceptionv1_caffe --layers mixed3a" in data["tuning"]["command"]
    assert "still coming" in page.text
    assert client.get(urls.tuning_plot("inceptionv1_caffe", "mixed3a", 0, "curves")).status_code == 404


def test_a_family_page_ranks_the_layers_units_and_lays_them_out_by_orientation(client: httpx.Client) -> None:
    page, data = _both(client, urls.tuning_family("inceptionv1_caffe", "mixed3b", "curves"),
                       urls.tuning_family("inceptionv1_caffe", "mixed3b", "curves", json=True))
    units = data["units"]
    assert len(units) == 480 and len({u["unit"] for u in units}) == 480
    assert [u["selectivity"] for u in units] == sorted((u["selectivity"] for u in units), reverse=True)
    assert all({"orientation", "radius"} <= set(u["preferred"]) for u in units)
    assert data["family"]["axes"][0]["name"] == "orientation" and "counterclockwise" in data["conventions"]
    placed = [u for u in units if u["at"]]
    assert len(placed) == 48 and all(0 <= x <= 100 and 0 <= y <= 100 for x, y in (u["at"] for u in placed))
    assert len({tuple(u["at"]) for u in placed}) == 48  # no two on one spot
    assert all(u["image_url"] or u["placeholder_url"] for u in placed)  # a render, else its top example marked
    best = units[0]
    # On the circle at its preferred orientation (y up, so 90 degrees is above the centre).
    x, y = best["at"]
    angle = math.degrees(math.atan2(50 - y, x - 50)) % 360
    assert abs((angle - best["preferred"]["orientation"] + 180) % 360 - 180) < 1
    assert page.text.count('class="family-unit"') == 48 and urls.unit("inceptionv1_caffe", "mixed3b", best["unit"]) in page.text
    lines = client.get(urls.tuning_family("inceptionv1_caffe", "mixed3b", "lines", json=True)).json()
    assert all(set(u["preferred"]) == {"orientation", "polarity"} for u in lines["units"])


@pytest.mark.parametrize(("family", "status", "text"), [
    ("curve", 404, "curves"),  # a typo: the suggestion
    ("gratings", 404, "precompute tuning"),  # not computed for this layer: the command
    ("curves%3Bdrop", 404, "no tuning family"),
])
def test_family_pages_refuse_unknown_or_missing_families(client: httpx.Client, family: str, status: int, text: str) -> None:
    for json in (True, False):
        response = client.get(f"/models/inceptionv1_caffe/mixed3b/tuning/{family}{'.json' if json else ''}")
        assert response.status_code == status and text in response.text
