"""Transformation robustness: random pad, jitter, scale and rotation, one resampling per step.

Lucid's standard transforms, in order::

    pad(12, constant 0.5), jitter(8), random_scale(0.9..1.1), random_rotate(-10..10), jitter(4)

Lucid's jitters are random crops, so the network sees a canvas of
``size + 2 * pad - jitter - jitter_after`` pixels (140 for a 128 px image)
with the image's content at scale 1 (times the random scale). Here each
image of the batch draws its own offsets, scale and angle; the composition is
one affine map applied with a single ``grid_sample`` (faster, and it blurs
less than resampling once per transform). Where a small scale or a rotation
reaches past the padded image, the sample reads the pad's grey, never black
(issue 9: black frames around early-layer renders).

``resize_to`` resamples the canvas to a fixed side afterwards: Lucent
upsamples every canvas smaller than 224 px to 224 (so a 128 px image is seen
at about x1.6); it is off by default, as in Lucid, and recorded in recipes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass(frozen=True)
class Transforms:
    pad: int = 12
    #: Grey level of the padding (Lucid: constant 0.5).
    pad_value: float = 0.5
    jitter: int = 8
    scale: tuple[float, float] = (0.9, 1.1)
    rotate_degrees: float = 10.0
    jitter_after: int = 4
    #: Resample the canvas to this side (Lucent's upsampling to 224); None keeps scale 1.
    resize_to: int | None = None
    #: Crop (or pad) the canvas about its centre to this side at scale 1: Lucid's ``crop_or_pad_to``, which its
    #: caricature recipe appends to the standard transforms. Only without ``resize_to``.
    crop_to: int | None = None

    def describe(self) -> dict[str, object]:
        return {"kind": "fused affine", **asdict(self)}

    def canvas(self, size: int) -> int:
        """Side of the image the network sees for a ``size`` px parameterization."""
        if self.resize_to is not None:
            return self.resize_to
        if self.crop_to is not None:
            return self.crop_to
        return size + 2 * self.pad - self.jitter - self.jitter_after

    def __call__(self, images: Tensor, generators: torch.Generator | Sequence[torch.Generator]) -> Tensor:
        """Randomly transformed ``images`` (B, 3, N, N), each with its own draw.

        With one generator per image, each image's draws depend on its own
        generator only, so an image comes out the same whatever batch it is in
        (a unit rendered on demand equals the one rendered in a batch).
        """
        batch = images.shape[0]
        if isinstance(generators, torch.Generator):
            draws = torch.rand(6, batch, generator=generators)
        else:
            if len(generators) != batch:
                raise ValueError(f"{len(generators)} generators for {batch} images")
            draws = torch.stack([torch.rand(6, generator=generator) for generator in generators], dim=1)

        def uniform(row: int, low: float, high: float) -> Tensor:
            return draws[row] * (high - low) + low

        shift = torch.stack([uniform(row, -self.jitter / 2, self.jitter / 2) for row in (0, 1)], dim=1)
        shift_after = torch.stack([uniform(row, -self.jitter_after / 2, self.jitter_after / 2) for row in (2, 3)], dim=1)
        scale = uniform(4, *self.scale)
        angle = uniform(5, -self.rotate_degrees, self.rotate_degrees) * (math.pi / 180)
        return self._sample(images, shift, shift_after, scale, angle)

    def centered(self, images: Tensor) -> Tensor:
        """The transforms' expected view: padded, centred, scale 1, no rotation (what final objectives use)."""
        zeros = torch.zeros(images.shape[0])
        return self._sample(images, torch.zeros(images.shape[0], 2), torch.zeros(images.shape[0], 2), zeros + 1, zeros)

    def _sample(self, images: Tensor, shift: Tensor, shift_after: Tensor, scale: Tensor, angle: Tensor) -> Tensor:
        batch, _, size, _ = images.shape
        padded = F.pad(images, [self.pad] * 4, value=self.pad_value) if self.pad else images
        full = size + 2 * self.pad
        canvas = self.crop_to or size + 2 * self.pad - self.jitter - self.jitter_after
        # In pixels from the centres: canvas point u reads padded point A (u - shift_after) - shift,
        # A = rotation(-angle) / scale. Normalized coordinates divide by half of each side.
        cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
        rotation = torch.stack([torch.stack([cos, sin], dim=1), torch.stack([-sin, cos], dim=1)], dim=1)
        matrix = rotation * (canvas / full)
        offset = (-torch.einsum("bij,bj->bi", rotation, shift_after) - shift) * (2.0 / full)
        theta = torch.cat([matrix, offset[:, :, None]], dim=2).to(images.device, images.dtype)
        side = self.resize_to or canvas
        grid = F.affine_grid(theta, [batch, 3, side, side], align_corners=False)
        # "border" repeats the outermost padded pixels: the pad's grey (or, unpadded, the image's edge).
        return F.grid_sample(padded, grid, mode="bilinear", padding_mode="border", align_corners=False)


STANDARD = Transforms()
#: Lucent 0.1.8's defaults: Lucid's transforms, then the canvas upsampled to 224 px.
LUCENT = Transforms(resize_to=224)
NONE = Transforms(pad=0, jitter=0, scale=(1.0, 1.0), rotate_degrees=0.0, jitter_after=0)

#: The input side Lucid's transforms are written for (InceptionV1's 224 px).
STANDARD_INPUT = 224


@dataclass(frozen=True)
class Fit:
    """A render's image side and transforms for one network, and how they were chosen (None: Lucid's own)."""

    size: int
    transforms: Transforms
    note: str | None = None


def fit(input_size: int, fixed_input: bool, size: int) -> Fit:
    """The side and transforms of a render asked at ``size`` px for a network of ``input_size`` px.

    A network of 224 px or more whose head takes any size gets Lucid's transforms and ``size`` unchanged. A
    smaller one gets the pad and jitters scaled by ``input_size / 224`` (at least 1 px: Lucid's 8 px jitter is a
    quarter of a 32 px network's view), and an image side no larger than what makes the canvas its input
    side, so a 32 px network renders 30 px images on a 32 px canvas instead of 224 px ones (7 times the side it
    sees, 50 times the pixels). A network that flattens a map of fixed size (``Flatten`` then ``Linear``) gets its
    canvas cropped or padded to exactly its input side (Lucid's ``crop_or_pad_to``).
    """
    if input_size >= STANDARD_INPUT and not fixed_input:
        return Fit(size, STANDARD)
    ratio = min(1.0, input_size / STANDARD_INPUT)
    scaled = replace(STANDARD, pad=max(1, round(STANDARD.pad * ratio)), jitter=max(1, round(STANDARD.jitter * ratio)),
                     jitter_after=max(1, round(STANDARD.jitter_after * ratio)))
    natural = input_size - 2 * scaled.pad + scaled.jitter + scaled.jitter_after  # its canvas is the input side
    side = min(size, natural) if ratio < 1 else size
    transforms = replace(scaled, crop_to=input_size) if fixed_input else scaled
    why = [f"sized to the network's {input_size} px input"] if ratio < 1 else []
    if ratio < 1:
        why.append(f"Lucid's pad and jitters scaled by {input_size}/{STANDARD_INPUT} (pad {scaled.pad}, jitter "
                   f"{scaled.jitter} and {scaled.jitter_after}), the image {side} px (asked: {size}) so the canvas is "
                   f"{transforms.canvas(side)} px")
    if fixed_input:
        why.append(f"the canvas cropped or padded to {input_size} px: the network flattens a map of fixed size")
    return Fit(side, transforms, "; ".join(why))
