"""A probe of a real model end to end, timed: its classes, top units and neuron groups, then a group's render.

    python bench/probe.py --data microscope-data [--model inceptionv1_caffe] [--images 5] [--device cpu]

Copies the store's database (blobs shared) into a scratch folder and probes ``--images`` of the shared ImageNet
sample there (the photos the examples were made from when the store holds them, else ../shared), as a worker
does: each probe's seconds (the forward pass, the heatmaps and every main layer's NMF groups), the groups' mean
unexplained variance per layer, then the time to render the first group of mixed4c on demand (the worker's
recipe). The store at --data needs the model's catalog (`microscope precompute all`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scratch import scratch_copy  # noqa: E402


def main() -> None:
    import torch
    from sqlalchemy import select

    from app.core.settings import Settings
    from app.core.store import Layer, Probe, ProbeGroup, Store
    from precompute.running.devices import pick_device
    from precompute.running.images import list_images
    from precompute.models import load
    from precompute.live.probe import render_group, run_probe
    from precompute.running.runs import stored_dataset_root
    from precompute.running.context import Stage

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "microscope-data")
    parser.add_argument("--model", default="inceptionv1_caffe")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--group-layer", default="mixed4c")
    arguments = parser.parse_args()
    loaded = load(arguments.model, None)
    device = pick_device(arguments.device)
    net = loaded.net.to(device).eval()
    seconds, fvus = [], {}
    with scratch_copy(arguments.data) as copy, Store.open(Settings.load(copy)) as store:
        root = stored_dataset_root(store) or Path(os.environ.get("MICROSCOPE_SHARED", ROOT.parent / "shared")) / "data/imagenet-sample"
        photos = list_images(root)[:arguments.images]
        stage = Stage(store, net, loaded.weights_sha256, device, progress=False)
        ids = []
        for number, photo in enumerate(photos):
            data = photo.read_bytes()
            started = time.perf_counter()
            run_probe(stage, f"bench{number:04d}", data, public_id=f"bench{number}")
            seconds.append(time.perf_counter() - started)
            ids.append(f"bench{number}")
        with store.session() as session:
            for layer, fvu in session.execute(select(Layer.name, ProbeGroup.fvu).join(Layer, ProbeGroup.layer_id == Layer.id)
                                              .join(Probe).where(ProbeGroup.group == 0).order_by(ProbeGroup.id)):
                fvus.setdefault(layer, []).append(fvu)
        started = time.perf_counter()
        render_group(stage, ids[0], arguments.group_layer, 0)
        rendered = time.perf_counter() - started
    print(f"probe on {device} ({torch.get_num_threads()} threads), {arguments.model}, {len(photos)} photos of {root}")
    print(f"probe (classes, top units, heatmaps, neuron groups of every main layer): median {statistics.median(seconds):.2f} s, "
          f"first {seconds[0]:.2f} s, max {max(seconds):.2f} s")
    print("neuron groups' unexplained variance (6 groups), mean over the photos: "
          + ", ".join(f"{layer} {statistics.mean(values):.2f}" for layer, values in fvus.items()))
    print(f"render of {arguments.group_layer}'s first group on demand: {rendered:.1f} s")


if __name__ == "__main__":
    main()
