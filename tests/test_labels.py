"""Concept labels: the WordNet hierarchy file, the scoring, and the stage that labels every unit."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
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
from app.core.store import Store, UnitLabel
from app.core.zoo.concepts import HIERARCHY_FILE, MIN_COUNT, MIN_COVERAGE, MIN_LIFT, Hierarchy, image_class, label
from tests.conftest import ROOT

WORDNET = Path("/usr/share/wordnet")
GOLDEN, GOLDFISH = "n02099601", "n01443537"
DOG = "n02084071"


@pytest.fixture(scope="module")
def hierarchy() -> Hierarchy:
    return Hierarchy.load()


def test_the_hierarchy_file_is_what_the_script_makes_of_wordnet(tmp_path: Path) -> None:
    """Debian's wordnet-base (scripts/system-deps installs it): the committed file is reproducible."""
    made = tmp_path / "hierarchy.json"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "imagenet_hierarchy.py"), "--wordnet", str(WORDNET),
                    "--output", str(made)], check=True, capture_output=True)
    assert made.read_bytes() == HIERARCHY_FILE.read_bytes()


def test_the_hierarchy_reaches_the_concepts_readers_expect(hierarchy: Hierarchy) -> None:
    assert len(hierarchy.classes) == 1000 and hierarchy.names[DOG] == "dog"
    dogs = [wnid for wnid in hierarchy.classes if DOG in hierarchy.ancestors(wnid)]
    assert len(dogs) == 118 and GOLDEN in dogs  # ImageNet's 118 dog classes
    assert hierarchy.names["n01503061"] == "bird" and "n01503061" in hierarchy.ancestors("n01530575")  # a brambling
    assert image_class(f"{GOLDEN}/photo.jpg") == GOLDEN and image_class("photo.jpg") is None


def test_a_unit_whose_top_examples_are_all_of_one_class_is_labelled_with_it(hierarchy: Hierarchy) -> None:
    base = hierarchy.concept_counts(hierarchy.classes)  # the sample: one image of each class
    labels = label([GOLDEN] * 40, base, 1000, hierarchy)
    assert [(l.name, l.count, l.of, l.coverage, l.lift) for l in labels] == [("golden retriever", 40, 40, 1.0, 1000.0)]
    dogs = [wnid for wnid in hierarchy.classes if DOG in hierarchy.ancestors(wnid)][::3][:40]
    assert [l.name for l in label(dogs, base, 1000, hierarchy)][:1] in (["dog"], ["hunting dog"], ["working dog"])
    assert label(hierarchy.classes[::25], base, 1000, hierarchy) == []  # 40 unrelated classes: no clear concept
    assert label([None] * 40, base, 1000, hierarchy) == []  # images without a class


def test_a_labels_p_value_is_its_permutation_null_and_chance_labels_do_not_survive(hierarchy: Hierarchy) -> None:
    """A concept's p-value is the chance that random sets of as many distinct dataset images put at least as many
    under it (checked against 20,000 drawn sets); a layer of units whose top examples are random images gets labels
    from the effect-size rules alone, and none once Benjamini-Hochberg's q must be below 0.05."""
    from app.core.zoo.concepts import candidates, label_layer

    base = hierarchy.concept_counts(hierarchy.classes)
    rng = np.random.default_rng(0)
    dogs = [wnid for wnid in hierarchy.classes if DOG in hierarchy.ancestors(wnid)]
    top = dogs[:4] + list(rng.choice([c for c in hierarchy.classes if c not in dogs], 6, replace=False))
    found = {c.concept: c for c in candidates(top, base, 1000, hierarchy)}[DOG]
    draws = [rng.choice(1000, 10, replace=False) for _ in range(20000)]
    dog_index = np.array([DOG in hierarchy.ancestors(wnid) for wnid in hierarchy.classes])
    sampled = np.mean([dog_index[d].sum() >= found.count for d in draws])
    assert found.count == 4 and found.p == pytest.approx(sampled, abs=0.005) and 0.01 < found.p < 0.1
    chance = {unit: list(rng.choice(hierarchy.classes, 10, replace=False)) for unit in range(300)}
    before = sum(bool(labels) for labels in label_layer(chance, base, 1000, hierarchy, alpha=None).values())
    after = label_layer(chance, base, 1000, hierarchy)
    assert before >= 5 and sum(bool(labels) for labels in after.values()) == 0, before
    real = label_layer({**chance, 999: [GOLDEN] * 10 + dogs[:10]}, base, 1000, hierarchy)[999]
    assert real and real[0].q < 0.05 and real[0].p <= real[0].q  # a real concept survives the correction


def _two_class_images(folder: Path) -> Path:
    """20 reddish images of golden retrievers and 20 bluish of goldfish: a random network tells them apart."""
    rng = np.random.default_rng(0)
    for number in range(40):
        wnid, colour = (GOLDEN, (200, 60, 40)) if number % 2 else (GOLDFISH, (30, 60, 200))
        pixels = np.clip(np.array(colour) + rng.normal(0, 25, (64, 64, 3)), 0, 255).astype(np.uint8)
        (folder / wnid).mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / wnid / f"{number:03d}.jpg")
    return folder


def test_the_stage_labels_every_layer_and_a_rerun_reuses_them(tiny_net, tmp_path: Path) -> None:  # noqa: ANN001
    from precompute.stages.catalog import catalog
    from precompute.stages.examples import ExamplesConfig, run_examples
    from precompute.stages.labels import run_labels
    from precompute.running.context import Stage

    images = _two_class_images(tmp_path / "images")
    settings = Settings.load(tmp_path / "store")
    spec = tiny_net.spec
    with Store.open(settings, create=True) as store:
        catalog(store, spec)
        run_examples(Stage(store, tiny_net, "w", torch.device("cpu"), progress=False), images, ExamplesConfig(layers=tuple(spec.layers), k=8, batch_size=8))
        first = run_labels(store, spec, images, spec.layers)
        again = run_labels(store, spec, images, spec.layers)
        with store.session() as session:
            rows = session.scalars(select(UnitLabel)).all()
    assert first.layers_labelled == len(spec.layers) and again.layers_reused == len(spec.layers)
    assert first.units_labelled + first.units_unclear == sum(layer.channels for layer in spec.layers)
    assert first.units_labelled > 0 and {row.name for row in rows} <= {"golden retriever", "goldfish"}
    assert all(r.count >= MIN_COUNT and r.coverage >= MIN_COVERAGE and r.lift >= MIN_LIFT for r in rows)
    labelled = max(rows, key=lambda row: row.score)
    client = TestClient(create_app(settings))
    unit = client.get(f"/models/tiny/{_layer_of(settings, labelled.unit_id)}.json").json()
    assert unit["labelled"] and unit["labels"][0]["name"] == labelled.name and unit["labels"][0]["lift"] == labelled.lift
    page = client.get(f"/models/tiny/{_layer_of(settings, labelled.unit_id)}").text
    assert "Its top examples share:" in page and f'<strong class="concept">{labelled.name}</strong>' in page
    # The layer page: its concepts to filter by, each tile's top concept, and the filter itself.
    layer = _layer_of(settings, labelled.unit_id).split("/")[0]
    whole = client.get(urls.layer("tiny", layer, json=True)).json()
    assert labelled.name in [c["name"] for c in whole["concepts"]]
    assert {u["concept"] for u in whole["units"]} - {None} <= {"golden retriever", "goldfish"}
    kept = client.get(urls.layer("tiny", layer, json=True, label=labelled.name)).json()
    with_it = {row.unit_id for row in rows if row.name == labelled.name}
    in_layer = {u for u in with_it if _layer_of(settings, u).startswith(layer + "/")}
    assert kept["label"] == labelled.name and 0 < len(kept["units"]) == len(in_layer)
    assert client.get(urls.layer("tiny", layer, json=True, label="aircraft carrier")).status_code == 404
    html = client.get(urls.layer("tiny", layer, label=labelled.name)).text
    assert f"labelled {labelled.name}" in html and 'class="concept"' in html


def _layer_of(settings: Settings, unit_id: int) -> str:
    from app.core.store import Layer, Unit

    with Store.open(settings, readonly=True) as store, store.session() as session:
        name, index = session.execute(select(Layer.name, Unit.index).join(Unit).where(Unit.id == unit_id)).one()
    return f"{name}/{index}"


def test_a_dataset_of_ones_own_classes_is_labelled_by_its_folder_names(tiny_net, tmp_path: Path) -> None:  # noqa: ANN001
    """Folders that are not WordNet synsets (a researcher's own classes): each folder is a flat concept."""
    from precompute.stages.catalog import catalog
    from precompute.stages.examples import ExamplesConfig, run_examples
    from precompute.stages.labels import run_labels
    from precompute.running.context import Stage

    images = _two_class_images(tmp_path / "images")
    for wnid, name in ((GOLDEN, "reds"), (GOLDFISH, "blues")):
        (images / wnid).rename(images / name)
    settings = Settings.load(tmp_path / "store")
    spec = tiny_net.spec
    with Store.open(settings, create=True) as store:
        catalog(store, spec)
        run_examples(Stage(store, tiny_net, "w", torch.device("cpu"), progress=False), images,
                     ExamplesConfig(layers=tuple(spec.layers), k=8, batch_size=8))
        result = run_labels(store, spec, images, spec.layers)
        with store.session() as session:
            rows = session.scalars(select(UnitLabel)).all()
    assert result.units_labelled > 0 and {row.name for row in rows} == {"reds", "blues"}
    assert all(row.q is not None and row.q < 0.05 for row in rows)
