"""Benchmark: our renderer against torch-lucent 0.1.8's ``render_vis``, like for like.

The same 8 channels of ``mixed4a`` (pre-ReLU, as Lucid's canonical images),
the same steps, a 128 px Fourier-basis colour-decorrelated image, the
standard transforms, the network seeing 224x224. Lucent gets its best case:
a fresh model (and so fresh hooks) per channel. The two alternate in one run
and the script prints one JSON line: seconds per channel for each, the
ratio, and the mean final objective of each measured the same way (the
channel's mean pre-ReLU activation on each final image, untransformed,
resized to 224), plus how many channels ended with no activation at all.

Needs lucent, which is not a dependency of the project:

    .venv/bin/pip install torch-lucent==0.1.8
    .venv/bin/python bench/render.py [--steps 512] [--channels 0:8] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.zoo import get_model  # noqa: E402
from precompute.devices import pick_device  # noqa: E402
from precompute.optvis import objectives, param  # noqa: E402
from precompute.optvis.render import render, resolve_precision  # noqa: E402
from precompute.optvis.transform import STANDARD  # noqa: E402
from precompute.weight_files import locate  # noqa: E402
from precompute.weights import load_network  # noqa: E402

LAYER = "mixed4a"


class Tap(nn.Identity):
    """A named module whose output lucent's hooks read."""


class LucentView(nn.Module):
    """Our network as a plain module with named block outputs, preprocessing inside (preprocess=False).

    Plain: PyTorch's own ``nn.LocalResponseNorm`` and ``nn.Conv2d`` stem and
    the default memory format, as a user would write the network for lucent;
    our renderer's banded-convolution LRN, space-to-depth stem and
    channels-last layout are part of what is measured. The weights and the function computed are the same.
    """

    def __init__(self, net: nn.Module, layers: tuple[str, ...]) -> None:
        super().__init__()
        self.net = net
        self.taps = layers
        for name in layers:
            self.add_module(name, Tap())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        activations = self.net(images)  # the whole network, as a plain module runs
        for name in self.taps:
            getattr(self, name)(activations[name])
        return activations["softmax2"]


def final_objective(net: nn.Module, images: torch.Tensor, channels: list[int]) -> tuple[list[float], int]:
    """Mean pre-ReLU activation of each image's own channel at 224 px, and how many have no activation left."""
    with torch.no_grad():
        seen = F.interpolate(images, size=(224, 224), mode="bilinear", align_corners=False)
        pre = net(seen.contiguous(memory_format=torch.channels_last), (LAYER,))[LAYER]
        own = pre[torch.arange(len(channels)), torch.tensor(channels)]
    values = own.flatten(1).mean(dim=1)
    zero = int((F.relu(own).flatten(1).amax(dim=1) == 0).sum())
    return values.tolist(), zero


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=512)
    parser.add_argument("--channels", default="0:8")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--weights", type=Path)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = parser.parse_args()

    from lucent.optvis import objectives as lucent_objectives
    from lucent.optvis import param as lucent_param
    from lucent.optvis import render as lucent_render
    from lucent.optvis import transform as lucent_transform

    start, stop = (int(part) for part in args.channels.split(":"))
    channels = list(range(start, stop))
    spec = get_model("inceptionv1")
    device = pick_device(args.device)
    weights = locate(spec, args.weights)
    net = load_network(spec, weights)[0].to(device)

    started = time.perf_counter()
    ours = render(net, objectives.channel(LAYER, channels), param.fourier(args.size), channels, STANDARD,
                  steps=args.steps, device=device, precision=args.precision)
    ours_seconds = time.perf_counter() - started

    lucent_images, lucent_seconds = [], 0.0
    for channel in channels:
        plain = load_network(spec, weights)[0].to(memory_format=torch.contiguous_format)
        plain.lrn0, plain.lrn1 = (nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) for _ in range(2))
        stem = plain.convs["conv2d0"]
        plain.convs["conv2d0"] = nn.Conv2d(3, 64, 7, stride=2, padding=3).requires_grad_(False)
        plain.convs["conv2d0"].load_state_dict(stem.state_dict())
        fresh = LucentView(plain, (LAYER,)).to(device).eval()
        started = time.perf_counter()
        result = lucent_render.render_vis(
            fresh, lucent_objectives.channel(LAYER, channel), lambda: lucent_param.image(args.size),
            transforms=lucent_transform.standard_transforms, thresholds=(args.steps,), preprocess=False,
            progress=False, show_image=False,
        )
        lucent_seconds += time.perf_counter() - started
        lucent_images.append(torch.from_numpy(result[-1]).permute(0, 3, 1, 2))

    ours_values, ours_zero = final_objective(net, ours.images.to(device), channels)
    lucent_values, lucent_zero = final_objective(net, torch.cat(lucent_images).to(device), channels)
    per_ours, per_lucent = ours_seconds / len(channels), lucent_seconds / len(channels)
    print(json.dumps({
        "device": str(device), "precision": resolve_precision(args.precision, device), "layer": LAYER, "channels": len(channels), "steps": args.steps, "size": args.size,
        "ours_seconds_per_channel": round(per_ours, 3), "lucent_seconds_per_channel": round(per_lucent, 3),
        "speedup": round(per_lucent / per_ours, 2),
        "ours_mean_objective": round(sum(ours_values) / len(channels), 2),
        "lucent_mean_objective": round(sum(lucent_values) / len(channels), 2),
        "ours_zero_channels": ours_zero, "lucent_zero_channels": lucent_zero,
    }))


if __name__ == "__main__":
    main()
