"""`render`: optimize images for an objective. Pure: no printing, saving or showing."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from precompute.models.base import Network
from precompute.optvis.objectives import Objective, redirecting
from precompute.optvis.param import Parameterization
from precompute.optvis.transform import Transforms

#: Lucid's defaults: Adam at 0.05 for 512 steps.
LEARNING_RATE = 0.05
STEPS = 512
#: Steps between calls of a render's ``poll``.
POLL_EVERY = 8


@dataclass(frozen=True)
class Rendered:
    #: (B, 3, N, N) RGB in [0, 1], on the CPU.
    images: Tensor
    #: (B,) the objective of each final image under the preprocessing it was optimized for:
    #: the transforms' centred view (padded, scale 1, no jitter or rotation).
    objective: Tensor


Precision = Literal["auto", "fp32", "bf16"]


def resolve_precision(precision: Precision, device: torch.device) -> Literal["fp32", "bf16"]:
    """``auto`` is bfloat16 where the hardware computes it natively (CUDA; CPUs with AVX-512 BF16 or AMX).

    Mixed precision halves the step time there; the network's weights and the
    image parameters stay float32 and the final objective is measured in
    float32 (bench/render.py compares both).
    """
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16"
    return "bf16" if device.type == "cpu" and torch.ops.mkldnn._is_mkldnn_bf16_supported() else "fp32"


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def render(
    net: Network,
    objective: Objective,
    parameterization: Parameterization,
    seeds: Sequence[int],
    transforms: Transforms,
    steps: int = STEPS,
    device: torch.device | str = "cpu",
    learning_rate: float = LEARNING_RATE,
    precision: Precision = "fp32",
    poll: Callable[[], None] | None = None,
) -> Rendered:
    """Optimize one image per seed for ``objective`` (which scores each batch element).

    The network runs only as far as the objective's layers; its weights stay
    frozen; during the first `REDIRECT_STEPS` steps every ReLU passes Lucid's
    redirected gradient (`redirecting`: hooks that remove themselves). Each image's initial values come from its
    own seed, and so do its random transforms: an image does not depend on the batch it is in. The loss is the
    objective's `total` (a group's mean for grouped objectives, as in Lucid).
    ``poll`` is called every `POLL_EVERY` steps (a worker serves waiting
    requests there, in the middle of a long batch); it must not touch this
    render's state.
    """
    device = torch.device(device)
    precision = resolve_precision(precision, device)
    generators = [torch.Generator().manual_seed(seed) for seed in seeds]
    params, image_fn = parameterization(len(seeds), generators, device)
    optimizer = torch.optim.Adam(params, lr=learning_rate)
    draws = [torch.Generator().manual_seed(seed ^ 0x5EED) for seed in seeds]
    layers = tuple(objective.layers)
    for step in range(steps):
        if poll is not None and step % POLL_EVERY == POLL_EVERY - 1:
            poll()
        optimizer.zero_grad(set_to_none=True)
        batch = transforms(image_fn(), draws).contiguous(memory_format=torch.channels_last)
        with redirecting(net, step), _autocast(device, precision):
            loss = -objective.total(net(batch, layers))
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        images = image_fn()
        seen = transforms.centered(images).contiguous(memory_format=torch.channels_last)
        values = objective(net(seen, layers))
    return Rendered(images=images.detach().float().cpu(), objective=values.float().cpu())
