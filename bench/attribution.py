"""Why the network decides (issue 23): attribution, ablation and caricature times on a real model, and the figure.

    python bench/attribution.py --data microscope-data [--model inceptionv1_caffe] [--photos 3] [--device cpu]

On a scratch copy of the store (blobs shared), with the shared ImageNet sample:

(a) a probe end to end in process (`precompute.live.probe.run_probe`: classes, top units, neuron groups, the three
    attribution methods for its top class and its deepest top unit, each layer's top units ablated), and the
    attributions alone (gradient, integrated gradients, Grad-CAM of the top class and the top unit);
(b) a caricature of one layer (mixed4c, the worker's recipe: 128 px, 128 steps);
(c) one ablation over the dataset's labelled images: the 10 most curve-selective units of mixed3b (the curve family
    page's; the store needs mixed3b's tuning), zero and mean, top-1/top-5 before and after, beside Curve Circuits'
    88.6% -> 86.3% top-5 (Microscope's InceptionV1: another training and data set).

The sanity-check table (method by randomization depth) is the stage's own output:
``microscope precompute sanity --count 50``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scratch import scratch_copy  # noqa: E402


def main() -> None:
    import torch

    from app.core.settings import Settings
    from app.core.store import Store
    from precompute.live.ablation import run_ablation, target_of
    from precompute.methods.attribution import METHODS, Target, attribute
    from precompute.running.devices import pick_device
    from precompute.stages.examples import input_transform
    from precompute.running.images import list_images, load_rgb
    from precompute.models import load
    from precompute.live.probe import render_caricature, run_probe
    from precompute.running.runs import stored_dataset_root
    from precompute.running.context import Stage

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "microscope-data")
    parser.add_argument("--model", default="inceptionv1_caffe")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--photos", type=int, default=3)
    parser.add_argument("--caricature-layer", default="mixed4c")
    parser.add_argument("--family", default="curves:mixed3b:10")
    arguments = parser.parse_args()
    loaded = load(arguments.model, None)
    device = pick_device(arguments.device)
    net = loaded.net.to(device).eval()
    spec = net.spec
    logits = net.logits_layer.name
    with scratch_copy(arguments.data) as copy, Store.open(Settings.load(copy)) as store:
        root = stored_dataset_root(store)
        if root is None:
            raise SystemExit(f"{arguments.data} has no dataset: run `microscope precompute all`")
        stage = Stage(store, net, loaded.weights_sha256, device, progress=False)
        photos = list_images(root)[100:100 + arguments.photos]
        probes, attributions = [], []
        for number, photo in enumerate(photos):
            started = time.perf_counter()
            run_probe(stage, f"bench-attribution-{number}", photo.read_bytes(), public_id=f"bench-attr-{number}")
            probes.append(time.perf_counter() - started)
            image = input_transform(spec)(load_rgb(photo))
            with torch.no_grad():
                top = int(net.logits(image[None]).argmax())
                deepest = net(image[None], ["mixed5b"])["mixed5b"][0]
            position = int(deepest.flatten(1).amax(dim=1).argmax())
            spot = int(deepest[position].argmax())
            started = time.perf_counter()
            for target in (Target(logits, top), Target("mixed5b", position, spot // deepest.shape[-1], spot % deepest.shape[-1])):
                for method in METHODS:
                    attribute(net, image, target, method)
            attributions.append(time.perf_counter() - started)
        print(f"attribution on {device} ({torch.get_num_threads()} threads), {arguments.model}, {len(photos)} photos")
        print(f"(a) probe end to end (classes, units, groups, 3 methods x top class and top unit, ablated classes): "
              f"median {statistics.median(probes):.2f} s {[round(p, 2) for p in probes]}")
        print(f"    the six attribution maps alone: median {statistics.median(attributions):.2f} s "
              f"{[round(a, 2) for a in attributions]}")
        started = time.perf_counter()
        render_caricature(stage, "bench-attr-0", arguments.caricature_layer)
        print(f"(b) caricature of {arguments.caricature_layer}: {time.perf_counter() - started:.1f} s")
        target = target_of(store, spec, f"family:{arguments.family}")
        for mode in ("zero", "mean"):
            started = time.perf_counter()
            result = run_ablation(stage, root, target, mode)
            figures = result.figures
            print(f"(c) ablation of {target.label} ({list(target.units)}) by {mode} over {figures['images']} images: "
                  f"{time.perf_counter() - started:.1f} s; top-1 {100 * figures['top1']:.1f}% -> "
                  f"{100 * figures['ablated_top1']:.1f}%, top-5 {100 * figures['top5']:.1f}% -> "
                  f"{100 * figures['ablated_top5']:.1f}%; most changed: "
                  + ", ".join(f"{c['label']} {c['probability_change']:+.2f}" for c in figures["classes"][:5]))
    print("Curve Circuits (Microscope's InceptionV1, TensorFlow, another training): the curve detectors ablated, "
          "top-5 88.6% -> 86.3%")


if __name__ == "__main__":
    main()
