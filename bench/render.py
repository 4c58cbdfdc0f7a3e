"""Benchmark: our renderer against torch-lucent 0.1.8's ``render_vis``, like for like.

The same 8 channels of ``mixed4a``, the same objective (the channel's mean
pre-ReLU activation: what lucent's hook on that layer sees), the same steps,
a 128 px Fourier-basis colour-decorrelated image, and the same scale and
transforms as lucent's defaults: Lucid's standard transforms, then the
canvas upsampled to 224 (our ``LUCENT`` transforms). Lucent gets its best
case: a fresh model (and so fresh hooks) per channel. The script prints one
JSON line: seconds per channel for each, the ratio, and the mean final
objective of each measured the same way (the objective on the transforms'
centred view, upsampled to 224 as both optimized it), plus how many
channels ended with no activation at all.

``--sheet`` also renders the first 4 units of every main layer with our
production recipe (Lucid's scale, the ReLU objective) and with lucent's
defaults, and saves them side by side as bench/out/contact-sheet.jpg.

Needs lucent, which is not a dependency of the project (its pinned kornia
would replace torch, hence --no-deps):

    .venv/bin/pip install --no-deps torch-lucent==0.1.8 kornia==0.4.1 decorator && .venv/bin/pip install ipython
    .venv/bin/python bench/render.py [--steps 512] [--channels 0:8] [--device auto] [--sheet --sheet-steps 128]
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

from app.core.zoo import get_model  # noqa: E402
from precompute.running.devices import pick_device  # noqa: E402
from precompute.optvis import objectives, param  # noqa: E402
from precompute.optvis.render import render, resolve_precision  # noqa: E402
from precompute.optvis.transform import LUCENT, STANDARD  # noqa: E402
from precompute.models.weight_files import locate  # noqa: E402
from precompute.models.bvlc import load_network  # noqa: E402

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
    """Mean pre-ReLU activation of each image's own channel on the view both optimized, and how many are off."""
    with torch.no_grad():
        seen = LUCENT.centered(images)
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
    parser.add_argument("--sheet", action="store_true", help="also save bench/out/contact-sheet.jpg")
    parser.add_argument("--sheet-steps", type=int, default=128)
    args = parser.parse_args()

    from lucent.optvis import objectives as lucent_objectives
    from lucent.optvis import param as lucent_param
    from lucent.optvis import render as lucent_render
    from lucent.optvis import transform as lucent_transform

    start, stop = (int(part) for part in args.channels.split(":"))
    channels = list(range(start, stop))
    spec = get_model("inceptionv1_caffe")
    device = pick_device(args.device)
    weights = locate(spec, args.weights)
    net = load_network(spec, weights)[0].to(device)

    started = time.perf_counter()
    ours = render(net, objectives.channel(LAYER, channels, relu=False), param.fourier(args.size), channels, LUCENT,
                  steps=args.steps, device=device, precision=args.precision)
    ours_seconds = time.perf_counter() - started

    lucent_images, lucent_seconds = [], 0.0
    for channel in channels:
        fresh = LucentView(_plain(spec, weights), (LAYER,)).to(device).eval()
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
    if args.sheet:
        path = contact_sheet(spec, net, weights, device, args.size, args.sheet_steps, args.precision)
        print(json.dumps({"contact_sheet": str(path), "steps": args.sheet_steps}))


def _plain(spec, weights: Path) -> nn.Module:  # noqa: ANN001
    """Our network as a user would write it for lucent: PyTorch's own LRN and stem conv, default layout."""
    plain = load_network(spec, weights)[0].to(memory_format=torch.contiguous_format)
    plain.lrn0, plain.lrn1 = (nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0) for _ in range(2))
    stem = plain.convs["conv2d0"]
    plain.convs["conv2d0"] = nn.Conv2d(3, 64, 7, stride=2, padding=3).requires_grad_(False)
    plain.convs["conv2d0"].load_state_dict(stem.state_dict())
    return plain


def contact_sheet(spec, net: nn.Module, weights: Path, device: torch.device, size: int, steps: int,  # noqa: ANN001
                  precision: str, units: int = 4) -> Path:
    """Units 0..3 of every main layer: ours (production recipe) on the left, lucent's defaults on the right."""
    import numpy as np
    from PIL import Image

    from lucent.optvis import objectives as lucent_objectives
    from lucent.optvis import param as lucent_param
    from lucent.optvis import render as lucent_render

    rows = []
    for layer in spec.main_layers:
        chosen = list(range(units))
        ours = render(net, objectives.channel(layer.name, chosen), param.fourier(size), chosen, STANDARD,
                      steps=steps, device=device, precision=precision).images
        view = LucentView(_plain(spec, weights), (layer.name,)).to(device).eval()
        # Lucent's own batching: one image per unit, each scored by its own channel.
        objective = sum(lucent_objectives.channel(layer.name, unit, batch=unit) for unit in chosen)
        theirs = lucent_render.render_vis(view, objective, lambda: lucent_param.image(size, batch=units),
                                          thresholds=(steps,), preprocess=False, progress=False, show_image=False)[-1]
        tiles = [*ours.permute(0, 2, 3, 1).numpy(), *theirs]
        gap = np.ones((size, 6, 3), dtype=np.float32)
        row = [tile if i != units else np.concatenate([np.ones((size, 18, 3)), tile], axis=1)
               for i, tile in enumerate(tiles)]
        rows.append(np.concatenate([part for tile in row for part in (tile, gap)], axis=1))
    sheet = np.concatenate([np.concatenate([row, np.ones((6, row.shape[1], 3))], axis=0) for row in rows], axis=0)
    out = Path(__file__).resolve().parent / "out" / "contact-sheet.jpg"
    out.parent.mkdir(exist_ok=True)
    Image.fromarray((sheet.clip(0, 1) * 255).round().astype(np.uint8)).save(out, quality=85)
    return out


if __name__ == "__main__":
    main()
