"""Concept labels of a store's model, per layer: how many units have a clear concept, and how many concepts.

    python bench/labels.py --data microscope-data [--model inceptionv1_caffe] [--images DIR]

Runs the labels stage (timed; a store labelled with the same recipe reuses its labels) on a store
whose examples are computed (`microscope precompute all` makes one), then prints, per main layer
and for the logits, the units, the fraction with a clear label, the number of distinct concepts
and the commonest ones; for the logits, the fraction of class units whose top label is their own
class or an ancestor of it. Network Dissection (Bau et al. 2017) counts "unique detectors" of
Broden's segmented concepts (objects, parts, scenes, textures, colours) by IoU of thresholded
activation maps: another method on other concepts, so its figures are not comparable one to one.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    from sqlalchemy import select

    from app.core.settings import Settings
    from app.core.store import Layer, Model, Store, Unit, UnitLabel
    from app.core.zoo.concepts import Hierarchy
    from precompute.running.images import locate_images
    from precompute.stages.labels import run_labels
    from precompute.models import build

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "microscope-data")
    parser.add_argument("--model", default="inceptionv1_caffe")
    parser.add_argument("--images", type=Path, default=None)
    arguments = parser.parse_args()
    spec = build(arguments.model).spec
    hierarchy = Hierarchy.load()
    with Store.open(Settings.load(arguments.data)) as store:
        started = time.perf_counter()
        result = run_labels(store, spec, locate_images(arguments.images), spec.layers)
        seconds = time.perf_counter() - started
        with store.session() as session:
            rows = session.execute(
                select(Layer.name, Unit.index, UnitLabel.rank, UnitLabel.concept, UnitLabel.name)
                .join(Unit, UnitLabel.unit_id == Unit.id).join(Layer, Unit.layer_id == Layer.id)
                .join(Model, Layer.model_id == Model.id).where(Model.name == spec.name)).all()
    print(f"labels stage: {seconds:.1f} s ({result.layers_labelled} layers labelled, {result.layers_reused} reused)")
    by_layer: dict[str, dict[int, list[tuple[int, str, str]]]] = {}
    for layer, index, rank, concept, name in rows:
        by_layer.setdefault(layer, {}).setdefault(index, []).append((rank, concept, name))
    print("| layer | units | clear by effect size alone | clear after the null (q < 0.05) | distinct concepts | "
          "commonest top labels |")
    print("|---|---|---|---|---|---|")
    shown = [layer for layer in spec.layers if layer.is_main or layer.kind == "logits"]
    for layer in shown:
        labelled = by_layer.get(layer.name, {})
        tops = Counter(min(labels)[2] for labels in labelled.values())
        concepts = {concept for labels in labelled.values() for _, concept, _ in labels}
        common = ", ".join(f"{name} ({count})" for name, count in tops.most_common(3))
        before = result.before_null.get(layer.name)
        shown = f"{before / layer.channels:.0%}" if before is not None else "(reused)"
        print(f"| {layer.name} | {layer.channels} | {shown} | {len(labelled) / layer.channels:.0%} | {len(concepts)} | "
              f"{common} |")
    logits = next((layer for layer in spec.layers if layer.kind == "logits"), None)
    if logits is not None and spec.classes:
        labelled = by_layer.get(logits.name, {})
        own = sum(1 for index, labels in labelled.items()
                  if min(labels)[1] in hierarchy.ancestors(spec.classes[index].synset))
        print(f"{logits.name}: {own} of {logits.channels} class units ({own / logits.channels:.0%}) have their own class "
              f"or an ancestor of it as top label ({len(labelled)} have a clear label)")


if __name__ == "__main__":
    main()
