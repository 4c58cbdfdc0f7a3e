"""Benchmark: does each unit's feature visualization excite it more than any natural image does?

For every stored channel visualization of a store: the unit's largest
pre-ReLU activation over positions on its own image (the model's own
preprocessing, the image as stored at scale 1, no transforms) divided by the
activation of its top dataset example. Prints a table per layer (rendered
units, median ratio, fraction of units at or above 1) and one JSON line with
the same figures; the issue's target is a fraction >= 0.9 in every layer.

    .venv/bin/python bench/fidelity.py --data microscope-data [--weights DIR] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.settings import Settings  # noqa: E402
from app.core.store import Artifact, DatasetExample, Layer, Model, Store, Unit  # noqa: E402
from app.core.zoo import get_model  # noqa: E402
from precompute.running.devices import pick_device  # noqa: E402
from precompute.models.weight_files import locate  # noqa: E402
from precompute.models.bvlc import load_network  # noqa: E402


def _rendered(store: Store, model: str) -> dict[str, list[tuple[int, str, float]]]:
    """(unit, blob key, top example activation) of every channel visualization, by layer."""
    with store.session() as session:
        top = dict(session.execute(select(DatasetExample.unit_id, DatasetExample.activation)
                                   .where(DatasetExample.kind == "top", DatasetExample.rank == 0)).all())
        rows = session.execute(
            select(Layer.name, Unit.index, Unit.id, Artifact.blob_key)
            .join(Unit, Artifact.unit_id == Unit.id).join(Layer, Unit.layer_id == Layer.id)
            .join(Model, Layer.model_id == Model.id)
            .where(Model.name == model, Artifact.technique == "channel").order_by(Layer.position, Unit.index)
        ).all()
    found: dict[str, list[tuple[int, str, float]]] = defaultdict(list)
    for layer, index, unit_id, key in rows:
        if unit_id in top:
            found[layer].append((index, key, top[unit_id]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("microscope-data"))
    parser.add_argument("--model", default="inceptionv1_caffe")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    spec = get_model(args.model)
    device = pick_device(args.device)
    net = load_network(spec, locate(spec, args.weights))[0].to(device)
    summary = {}
    with Store.open(Settings.load(args.data), readonly=True) as store:
        rendered = _rendered(store, spec.name)
        print(f"{'layer':<12} {'units':>5} {'median':>7} {'>= 1':>6}")
        for layer, units in rendered.items():
            ratios = []
            for index, key, best in units:
                with Image.open(store.blobs.path(key)) as opened:
                    image = torch.from_numpy(np.asarray(opened.convert("RGB"))).permute(2, 0, 1).float() / 255
                with torch.no_grad():
                    pre = net(image[None].to(device), (layer,))[layer][0, index]
                ratios.append(float(pre.max()) / best if best > 0 else float("nan"))
            valid = [r for r in ratios if r == r]
            median = statistics.median(valid) if valid else float("nan")
            share = sum(r >= 1 for r in valid) / len(valid) if valid else float("nan")
            summary[layer] = {"units": len(valid), "median": round(median, 2), "at_least_one": round(share, 3)}
            print(f"{layer:<12} {len(valid):>5} {median:>7.2f} {share:>6.0%}")
    print(json.dumps({"model": spec.name, "layers": summary}))


if __name__ == "__main__":
    main()
