"""Caricatures (issue 23): an image optimized so that a layer's activations match a probe's, exaggerated.

Lucid's recipe (``lucid/recipes/caricature.py``): the objective is ``dot * cossim ** cossim_pow`` between
the layer's output (after its ReLU) on the optimized image and on the probe's image, where ``dot`` is the
two outputs' dot product and ``cossim`` that dot product over the optimized output's norm (at least 0.1);
``cossim_pow`` is 0 by default, as in Lucid (a user's choice is recorded in the recipe). As in Lucid, the
probe's image goes through the same random transforms as the optimized one at every step (it shares the
batch), so the two are compared position by position; the transforms are Lucid's standard ones followed by
``crop_or_pad_to`` the network's input size, and the image is the network's input size, as the recipe's
``img = resize(img, model.image_shape[:2])``. Lucid's recipe has no blur term (its earlier feature-inversion
notebooks add ``blur_input_each_step``); none here either. Where this differs: the parameterization,
optimizer and learning rate are the units' renderer's (`precompute.optvis`: Lucid's Fourier, decorrelated
image and Adam at 0.05, as the recipe's ``param.image(..., decorrelate=True, fft=True)``), and the number of
steps is the on-demand renders' (Lucid: 512), recorded in each caricature's recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import Tensor

from precompute.models.base import Network
from precompute.optvis.objectives import redirected_relu, redirecting
from precompute.optvis.param import PARAMETERIZATIONS
from precompute.optvis.render import LEARNING_RATE
from precompute.optvis.transform import STANDARD, Transforms

#: Lucid's ``dot_compare`` exponent of the cosine (its default, 0): how much the caricature keeps the image's form
#: over its features.
COSSIM_POW = 0.0


def lucid_transforms(input_size: int) -> Transforms:
    """Lucid's caricature transforms: ``standard_transforms + [crop_or_pad_to(input size)]``."""
    return replace(STANDARD, crop_to=input_size)


def dot_compare(optimized: Tensor, target: Tensor, cossim_pow: float = COSSIM_POW) -> Tensor:
    """Lucid's ``dot_compare`` of each optimized output (B, C, H, W) with the target's (B, C, H, W)."""
    dot = (optimized * target).flatten(1).sum(dim=1)
    magnitude = optimized.flatten(1).pow(2).sum(dim=1).sqrt()
    cossim = (dot / (1e-6 + magnitude)).clamp(min=0.1)
    return dot * cossim ** cossim_pow


def caricature(net: Network, image: Tensor, layer: str, size: int, steps: int, seed: int,
               transforms: Transforms = STANDARD, learning_rate: float = LEARNING_RATE, cossim_pow: float = COSSIM_POW,
               device: torch.device | str = "cpu", poll: Callable[[], None] | None = None) -> tuple[Tensor, float, float]:
    """The caricature of ``image`` (3, H, W) in [0, 1] at ``layer`` as (3, size, size), its objective at the end and
    at the start (both on the transforms' centred view)."""
    device = torch.device(device)
    target_image = F.interpolate(image[None].float(), size=(size, size), mode="area").clamp(0, 1).to(device)
    generator = torch.Generator().manual_seed(seed)
    params, image_fn = PARAMETERIZATIONS["fourier"](size, channels=net.spec.channels)(1, [generator], device)
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    draws = torch.Generator().manual_seed(seed ^ 0x5EED)

    def score(optimized: Tensor, seen: Tensor) -> Tensor:
        outputs = net(torch.cat([optimized, seen]), (layer,))[layer]
        return dot_compare(redirected_relu(outputs[:1]), outputs[1:].clamp(min=0).detach(), cossim_pow)

    with torch.no_grad():
        start = float(score(transforms.centered(image_fn()), transforms.centered(target_image))[0])
    for step in range(steps):
        if poll is not None and step % 8 == 7:
            poll()
        optimizer.zero_grad(set_to_none=True)
        twin = torch.Generator()
        twin.set_state(draws.get_state())
        both = transforms(torch.cat([image_fn(), target_image]), [draws, twin])  # one draw for the two
        with redirecting(net, step):
            loss = -score(both[:1], both[1:]).sum()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        result = image_fn()
        end = float(score(transforms.centered(result), transforms.centered(target_image))[0])
    return result[0].detach().cpu(), end, start
