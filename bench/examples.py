"""Benchmark: the examples pass (all main and branch layers) against a plain forward pass.

Both read the same images through the same loader at the same batch size;
the two alternate round by round in one run, and the script prints one JSON
line with images/s of each (median over rounds) and their ratio.

    python bench/examples.py [--images DIR] [--count 256] [--batch 32] [--rounds 3] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.zoo import get_model  # noqa: E402
from precompute.devices import pick_device  # noqa: E402
from precompute.examples import input_transform  # noqa: E402
from precompute.images import batches, list_images, locate_images  # noqa: E402
from precompute.ranking import RunningStatistics  # noqa: E402
from precompute.weight_files import locate  # noqa: E402
from precompute.models.bvlc import load_network  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path)
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--count", type=int, default=256)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    spec = get_model("inceptionv1")
    device = pick_device(args.device)
    net = load_network(spec, locate(spec, args.weights))[0].to(device)
    files = list_images(locate_images(args.images))[: args.count]
    transform = input_transform(spec)

    def plain() -> None:
        for batch in batches(files, transform, args.batch, args.workers):
            net.logits(batch.images.to(device).contiguous(memory_format=torch.channels_last))

    def examples() -> None:
        running = RunningStatistics(spec, spec.layers, 40, device)
        for batch in batches(files, transform, args.batch, args.workers):
            images = batch.images.to(device).contiguous(memory_format=torch.channels_last)
            running.observe(net, images, torch.tensor(batch.indices))
        if device.type == "cuda":
            torch.cuda.synchronize()

    timings: dict[str, list[float]] = {"forward": [], "examples": []}
    with torch.inference_mode():
        plain()  # warm-up: allocator, kernels, page cache
        for _ in range(args.rounds):
            for name, job in (("forward", plain), ("examples", examples)):
                started = time.perf_counter()
                job()
                timings[name].append(len(files) / (time.perf_counter() - started))
    forward, with_examples = statistics.median(timings["forward"]), statistics.median(timings["examples"])
    print(json.dumps({
        "device": str(device), "images": len(files), "batch": args.batch, "layers": len(spec.layers),
        "forward_images_per_s": round(forward, 2), "examples_images_per_s": round(with_examples, 2),
        "ratio": round(with_examples / forward, 3),
    }))


if __name__ == "__main__":
    main()
