"""DeepDream per layer: the stage, its recipe and reuse, the layer and model pages, Microscope's links."""

from __future__ import annotations

from pathlib import Path

import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from app import urls
from app.main import create_app
from app.core.settings import Settings
from app.core.store import LayerArtifact, Store
from precompute.stages.dream import DEEP_DREAM, run_deep_dream
from precompute.optvis import objectives
from precompute.running.context import Stage
from precompute.stages.vis import VisConfig
from tests.support.live import copy_store


def test_the_deepdream_objective_is_the_squared_relu_of_the_layer() -> None:
    layer = torch.tensor([[[[-3.0, 1.0], [2.0, -1.0]]]])
    assert objectives.deepdream("a")({"a": layer}).tolist() == [(1 + 4) / 4]


def test_each_layer_dreams_once_and_the_pages_show_it(tiny_unrendered: Settings, tiny_net, tmp_path: Path) -> None:  # noqa: ANN001
    settings = copy_store(tiny_unrendered, tmp_path / "store")
    spec = tiny_net.spec
    layers = tuple(layer for layer in spec.layers if layer.is_main)
    config = VisConfig(layers=layers, units={}, techniques=("channel",), steps=4, size=32, batch=1, precision="fp32")
    client = TestClient(create_app(settings))
    before = client.get(urls.layer("tiny", "res1", json=True)).json()
    assert before["deep_dream"] is None and before["deep_dream_command"] == "microscope precompute dream --model tiny --layers res1"
    with Store.open(settings) as store:
        first = run_deep_dream(Stage(store, tiny_net, "w", torch.device("cpu"), progress=False), layers, config)
        again = run_deep_dream(Stage(store, tiny_net, "w", torch.device("cpu"), progress=False), layers, config)
        with store.session() as session:
            rows = session.scalars(select(LayerArtifact)).all()
        image = Image.open(store.blobs.local_path(rows[0].blob_key))
    assert (first.rendered, again.skipped, again.rendered) == (len(layers), len(layers), 0)
    assert {row.technique for row in rows} == {DEEP_DREAM} and image.size == (32, 32)
    assert all("squared ReLU" in row.recipe["objective"] for row in rows)
    client = TestClient(create_app(settings))
    layer = client.get(urls.layer("tiny", "res1", json=True)).json()
    assert layer["deep_dream"]["image_url"].startswith("/blobs/") and layer["deep_dream_command"] is None
    assert client.get(layer["deep_dream"]["image_url"]).status_code == 200
    assert 'id="deep-dream"' in client.get(urls.layer("tiny", "res1")).text
    model = client.get(urls.model("tiny", json=True)).json()
    assert sum(bool(row["deep_dream_url"]) for row in model["layers"]) == len(layers)
    link = client.get("/models/tiny/res1?models.technique=deep_dream", follow_redirects=False)
    assert link.status_code == 301 and link.headers["location"] == "/models/tiny/res1#deep-dream"
