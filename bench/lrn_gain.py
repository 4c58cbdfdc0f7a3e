"""Benchmark: how far each local response normalization is from the identity that circuits assume.

For every image of the folder, the gain of each LRN (output / input, where
the input is positive) per channel; prints one JSON line per LRN with the
median gain over all positive inputs and the spread of the per-channel
medians. precompute/methods/kernels.py quotes these figures.

    .venv/bin/python bench/lrn_gain.py [--images DIR] [--count 200]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.core.zoo import get_model  # noqa: E402
from precompute.running.images import batches, eval_transform, list_images, locate_images  # noqa: E402
from precompute.models.weight_files import locate  # noqa: E402
from precompute.models.bvlc import load_network  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path)
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--weights", type=Path)
    args = parser.parse_args()
    spec = get_model("inceptionv1_caffe")
    net = load_network(spec, locate(spec, args.weights))[0]
    files = list_images(locate_images(args.images))[: args.count]
    gains: dict[str, list[torch.Tensor]] = {"after pool1 (conv2d0 -> conv2d1)": [], "after conv2d2 (conv2d2 -> mixed3a)": []}
    with torch.no_grad():
        for batch in batches(files, eval_transform(spec), 25):
            x = net.preprocess(batch.images)
            before0 = F.max_pool2d(F.relu(net.convs["conv2d0"](x)), 3, 2, ceil_mode=True)
            after0 = net.lrn0(before0)
            before1 = F.relu(net.convs["conv2d2"](F.relu(net.convs["conv2d1"](after0))))
            after1 = net.lrn1(before1)
            for name, (before, after) in zip(gains, ((before0, after0), (before1, after1))):
                gains[name].append(torch.where(before > 1e-3, after / before, torch.nan))
    for name, parts in gains.items():
        ratio = torch.cat(parts)  # (N, C, H, W), NaN where the input was not positive
        per_channel = ratio.transpose(0, 1).flatten(1).nanmedian(dim=1).values
        print(json.dumps({
            "lrn": name, "images": len(files), "median_gain": round(float(ratio.flatten().nanmedian()), 3),
            "channel_median_min": round(float(per_channel[~per_channel.isnan()].min()), 3),
            "channel_median_max": round(float(per_channel[~per_channel.isnan()].max()), 3),
        }))


if __name__ == "__main__":
    main()
