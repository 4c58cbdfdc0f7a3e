"""Your own model end to end: `precompute all --model package.module:factory`, then every page for it.

The tiny model (tests/support/tiny_model.py) has a stem, an inception-style block and residual blocks with
BatchNorm, and seeded random weights, so this runs in seconds without any real weights.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from app import urls
from app.main import create_app
from app.core.settings import Settings
from app.core.store import Edge, Layer, Store, Unit
from tests.support.tiny_model import FACTORY


@pytest.fixture(scope="module")
def tiny_store(tiny_settings: Settings) -> Settings:
    return tiny_settings


@pytest.fixture(scope="module")
def client(tiny_store: Settings) -> TestClient:
    return TestClient(create_app(tiny_store))


def test_every_kind_of_layer_has_pages_and_json(client: TestClient) -> None:
    assert "tiny" in [model["name"] for model in client.get(urls.home(json=True)).json()["models"]]
    for layer, unit in (("stem_0", 0), ("mixed", 5), ("mixed_branch2_2_0", 1), ("res1", 3), ("res2_conv2_0", 1),
                        ("fc", 488)):
        page, twin = client.get(urls.unit("tiny", layer, unit)), client.get(urls.unit("tiny", layer, unit, json=True))
        assert page.status_code == twin.status_code == 200, layer
        data = twin.json()
        assert data["top_examples"], layer
        assert data["inputs"] or layer == "stem_0", layer
    assert client.get(urls.unit("tiny", "fc", 488, json=True)).json()["unit"]["label"] == "chain"
    assert client.get(urls.unit("tiny", "res1", 99)).status_code == 404


def test_residual_and_mixed_units_are_what_they_are(client: TestClient) -> None:
    mixed = client.get(urls.unit("tiny", "mixed", 5, json=True)).json()
    assert mixed["same_unit"]["layer"] == "mixed_branch2_2_0" and mixed["same_unit"]["index"] == 1
    residual = client.get(urls.unit("tiny", "res1", 3, json=True)).json()
    assert residual["same_unit"] is None  # a sum of paths, not its branches side by side
    sources = {group["layer"] for group in residual["inputs"]}
    assert "mixed" in sources  # expanded weights through the block, identity path included
    example = residual["top_examples"][0]
    box = client.get(example["url"] + ".json").json()["box"]
    assert 0 < box[2] < 100  # a residual unit's receptive field (25 px of 224) is a part of the image


def test_circuits_cover_every_pair_and_search_finds_the_class(client: TestClient, tiny_store: Settings) -> None:
    with Store.open(tiny_store, readonly=True) as store, store.session() as session:
        targets = set(session.scalars(
            select(Layer.name).join(Unit, Unit.layer_id == Layer.id).join(Edge, Edge.target_id == Unit.id)
        ))
        count = session.scalar(select(func.count()).select_from(Edge))
    assert targets == {"mixed", "mixed_branch1_0", "mixed_branch2_0_0", "mixed_branch2_2_0", "mixed_branch3_1_0",
                       "res1", "res1_conv1_0", "res1_conv2_0", "res1_conv3_0", "res1_downsample_0", "res2",
                       "res2_conv1_0", "res2_conv2_0", "res2_conv3_0", "fc"} and count > 1000
    assert "/models/tiny/fc/488" in client.get(urls.search("chain")).text


def test_a_probe_of_the_tiny_model(tiny_store: Settings, tiny_images: Path, tiny_weights: Path, tmp_path: Path) -> None:
    import hashlib

    import torch

    from precompute.running.context import Stage

    from precompute.models import load
    from precompute.live.probe import run_probe
    from tests.support.live import copy_store

    probed_store = copy_store(tiny_store, tmp_path / "store")
    photo = sorted(tiny_images.glob("*/*.jpg"))[7].read_bytes()
    sha = hashlib.sha256(photo).hexdigest()
    net = load(FACTORY, tiny_weights).net
    with Store.open(probed_store) as store:
        assert run_probe(Stage(store, net, "w", torch.device("cpu"), progress=False), sha, photo, public_id="tiny-probe")
    page = TestClient(create_app(probed_store)).get(urls.probe("tiny", "tiny-probe", json=True))
    assert page.status_code == 200
    probed = page.json()
    assert [layer["name"] for layer in probed["layers"]] == ["stem_0", "mixed", "res1", "res2"]
    assert all(layer["units"] for layer in probed["layers"]) and len(probed["classes"]) == 5


def test_a_unit_page_opens_with_a_summary_of_its_sections(tiny_store: Settings) -> None:
    """Issue 34's summary card: what the sections below say, in one place, and the same in the JSON."""
    client = TestClient(create_app(tiny_store))
    data = client.get(urls.unit("tiny", "mixed", 3, json=True)).json()
    summary = data["summary"]
    best = max((family for family in data["tuning"]["families"] if family["family"] != "joint"),
               key=lambda family: family["selectivity"])
    assert summary["tuning"]["family"] == best["family"] and summary["tuning"]["selectivity"] == round(best["selectivity"], 3)
    edges = [edge for group in data["inputs"] for edge in group["edges"]]
    strongest = max(edges, key=lambda edge: edge["norm"])
    assert summary["strongest_input"]["unit"] == f"{strongest['unit']['layer']}:{strongest['unit']['index']}"
    assert (summary["label"] or {}).get("name") == (data["labels"][0]["name"] if data["labels"] else None)
    page = client.get(urls.unit("tiny", "mixed", 3)).text
    assert 'id="summary"' in page and "Strongest input" in page and page.index('id="summary"') < page.index('id="tuning"')
