"""The labels stage: each unit's concept labels from the ImageNet classes of its top dataset examples.

Needs no network: it reads the examples the examples stage stored and lists the
same image folder for the base rates (its fingerprint must be the one the
examples were computed on). One run per layer, recipe-digested over the
labelling rules, the hierarchy file's sha256 and the digests of the examples
runs it read, so new examples (or new rules) relabel the layer and a rerun
skips what is current. The scoring is `app.core.zoo.concepts`'.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from sqlalchemy import select

from app.core.errors import StoreError
from app.core.store import Dataset, DatasetExample, DatasetImage, Run, Store, UnitLabel
from app.core.zoo import LayerSpec, ModelSpec
from app.core.zoo.concepts import Hierarchy, image_class, label_layer, rules
from app.core.store.algorithms import ALGORITHMS
from precompute.stages.examples import fingerprint
from precompute.running.images import list_images
from precompute.running.runs import catalogued_model, digested, finish_run, finished_recipes, replace_rows, share, start_run, unit_ids



@dataclass
class LabelsResult:
    layers_labelled: int = 0
    layers_reused: int = 0
    units_labelled: int = 0
    units_unclear: int = 0
    #: Units with a label by the effect-size rules alone, before the null and its correction (for comparison), in
    #: all and per layer labelled.
    units_labelled_before_null: int = 0
    before_null: dict[str, int] = field(default_factory=dict)
    concepts: set[str] = field(default_factory=set)


def run_labels(store: Store, spec: ModelSpec, root: Path, layers: Sequence[LayerSpec],
               shard: tuple[int, int] = (0, 1)) -> LabelsResult:
    """Label every unit of ``layers`` (shard i of n: layers i, i+n, ...) from the examples of the images at ``root``."""
    files = list_images(root, spec)
    classes = [image_class(file.path) for file in files]
    hierarchy = Hierarchy.load()
    flat = not any(hierarchy.knows(wnid) for wnid in classes)
    if flat:  # no folder is an ImageNet synset: the folders' own names, as flat concepts
        classes = [image_class(file.path, any_folder=True) for file in files]
        hierarchy = Hierarchy.flat(wnid for wnid in classes if wnid)
    known = sum(hierarchy.knows(wnid) for wnid in classes)
    base = hierarchy.concept_counts(wnid for wnid in classes if wnid)
    with store.session() as session:
        model = catalogued_model(session, spec)
        dataset = session.scalar(select(Dataset).where(Dataset.name == root.resolve().name))
        if dataset is None or dataset.fingerprint != fingerprint(files):
            raise StoreError(f"the store holds no examples computed on {root}: run `microscope precompute examples` "
                             "on these images first")
        done = finished_recipes(session, "labels")
    result = LabelsResult()
    for layer in share(layers, shard):
        with store.session() as session:
            examples = _top_examples(session, model.id, dataset.id, layer)
        recipe = digested({"algorithm": ALGORITHMS["labels"], "layer": layer.name, "rules": rules(),
                           **({"concepts": f"the image folders' names, flat (sha256 {hierarchy.digest[:12]})"}
                              if flat else {}),
                           "dataset_fingerprint": dataset.fingerprint, "examples_recipes": sorted(examples.recipes)})
        if recipe["recipe_sha256"] in done:
            result.layers_reused += 1
            continue
        rows = []
        by_unit = {unit_id: [image_class(path, any_folder=flat) for path in dict.fromkeys(paths)]  # distinct images
                   for unit_id, paths in examples.by_unit.items()}
        result.before_null[layer.name] = sum(
            bool(found) for found in label_layer(by_unit, base, known, hierarchy, alpha=None).values())
        result.units_labelled_before_null += result.before_null[layer.name]
        for unit_id, labels in label_layer(by_unit, base, known, hierarchy).items():
            rows += [{"unit_id": unit_id, "rank": rank, **vars(found)} for rank, found in enumerate(labels)]
            result.units_labelled += bool(labels)
            result.units_unclear += not labels
            result.concepts |= {found.concept for found in labels}
        _write(store, model.id, layer, recipe, rows)
        result.layers_labelled += 1
    return result


@dataclass
class _Examples:
    #: Each unit's top examples' image paths, by unit id (every unit of the layer, none for a unit without examples).
    by_unit: dict[int, list[str]]
    #: Recipe digests of the examples runs these came from.
    recipes: set[str]


def _top_examples(session, model_id: int, dataset_id: int, layer: LayerSpec) -> _Examples:  # noqa: ANN001
    ids = unit_ids(session, model_id, [layer.name])
    by_unit: dict[int, list[str]] = {unit_id: [] for unit_id in ids.values()}
    runs: set[int] = set()
    query = (select(DatasetExample.unit_id, DatasetImage.path, DatasetExample.run_id)
             .join(DatasetImage, DatasetExample.image_id == DatasetImage.id)
             .where(DatasetExample.unit_id.in_(list(ids.values())), DatasetExample.kind == "top",
                    DatasetImage.dataset_id == dataset_id)
             .order_by(DatasetExample.unit_id, DatasetExample.rank))
    grouped: defaultdict[int, list[str]] = defaultdict(list)
    for unit_id, path, run_id in session.execute(query):
        grouped[unit_id].append(path)
        runs.add(run_id)
    by_unit.update(grouped)
    recipes = {str(params.get("recipe_sha256")) for params in session.scalars(select(Run.params).where(Run.id.in_(runs)))}
    return _Examples(by_unit, recipes)


def _write(store: Store, model_id: int, layer: LayerSpec, recipe: dict, rows: list[dict]) -> None:
    """Replace the layer's labels and record the run that made them, in one transaction."""
    with store.session() as session:
        units = list(unit_ids(session, model_id, [layer.name]).values())
    for attempt in store.retrying():  # a worker may hold the lock
        with attempt, store.transaction() as session:
            run = start_run(session, "labels", model_id, recipe)
            replace_rows(session, UnitLabel, UnitLabel.unit_id, units, rows, run)
            finish_run(session, run)
