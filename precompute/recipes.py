"""The default render recipe, shared by the main job and the live worker (torch-free: the CLI reads it)."""

from __future__ import annotations

from dataclasses import dataclass

from app.core.zoo import LayerSpec


@dataclass(frozen=True)
class Defaults:
    """The recipe of the main job's renders and of renders on demand (`microscope worker`).

    Fewer steps than Lucid's 512, at 128 px, so that a unit renders on a CPU in
    seconds; the stem's conv layers (cheap, and slower to converge) get more.
    A unit rendered on demand and one rendered by ``precompute all`` (or
    ``precompute vis`` with these settings) share the recipe's digest.
    """

    steps: int = 128
    early_steps: int = 256
    size: int = 128

    def steps_for(self, layer: LayerSpec) -> int:
        return self.early_steps if self.is_early(layer) else self.steps

    @staticmethod
    def is_early(layer: LayerSpec) -> bool:
        """A stem convolution (a trunk conv at most 4 pixels apart): InceptionV1's conv2d0-2, VGG's first stages."""
        return layer.kind == "conv" and layer.stride <= 4


ON_DEMAND = Defaults()
