"""Transformation robustness: random pad, jitter, scale and rotation, one resampling per step.

Lucid's standard transforms (pad 12 with grey, jitter 8, scale 0.9-1.1,
rotation -10..10 degrees, jitter 4), each image of the batch drawn on its
own, composed into a single affine map and applied with one ``grid_sample``
that also resizes to the network's input size. Sampling once instead of once
per transform is faster and blurs less; everything stays differentiable and
on the device.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Transforms:
    pad: int = 12
    jitter: int = 8
    scale: tuple[float, float] = (0.9, 1.1)
    rotate_degrees: float = 10.0
    jitter_after: int = 4

    def describe(self) -> dict[str, object]:
        return {"kind": "fused affine", **asdict(self)}

    def __call__(self, images: Tensor, output_size: int, generator: torch.Generator) -> Tensor:
        """Randomly transformed ``images`` (B, 3, N, N), resampled to ``output_size``."""
        batch, _, size, _ = images.shape
        padded = F.pad(images, [self.pad] * 4, value=0.5) if self.pad else images
        full = size + 2 * self.pad

        def uniform(low: float, high: float) -> Tensor:
            return torch.rand(batch, generator=generator) * (high - low) + low

        to_unit = 2.0 / full  # pixels to normalized coordinates
        shift = torch.stack([uniform(-self.jitter / 2, self.jitter / 2) for _ in range(2)], dim=1) * to_unit
        shift_after = torch.stack([uniform(-self.jitter_after / 2, self.jitter_after / 2) for _ in range(2)], dim=1) * to_unit
        scale = uniform(*self.scale)
        angle = uniform(-self.rotate_degrees, self.rotate_degrees) * (math.pi / 180)
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        # Output point u reads source point A (u - shift_after) - shift, A = rotation(-angle) / scale.
        matrix = torch.stack([torch.stack([cos, sin], dim=1), torch.stack([-sin, cos], dim=1)], dim=1)
        offset = -torch.einsum("bij,bj->bi", matrix, shift_after) - shift
        theta = torch.cat([matrix, offset[:, :, None]], dim=2).to(images.device, images.dtype)
        grid = F.affine_grid(theta, [batch, 3, output_size, output_size], align_corners=False)
        return F.grid_sample(padded, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


STANDARD = Transforms()
NONE = Transforms(pad=0, jitter=0, scale=(1.0, 1.0), rotate_degrees=0.0, jitter_after=0)
