"""The default render recipe, shared by the main job and the live worker (torch-free: the CLI reads it)."""

from __future__ import annotations

from dataclasses import dataclass

from app.core.zoo import LayerSpec


#: Units of every main layer the worker's fill draws first: a layer page's first screen, what a newcomer opens
#: before any analysis (12 main layers of InceptionV1: 288 units, some 5 minutes on 2 CPU cores).
FIRST_LOOK = 24
#: A stem convolution's receptive field is at most the input side over this (`Defaults.is_early`).
STEM_FIELD = 10


@dataclass(frozen=True)
class Defaults:
    """The recipe of the main job's renders and of renders on demand (`microscope worker`).

    Fewer steps than Lucid's 512, at 128 px, so that a unit renders on a CPU in
    seconds; the stem's conv layers (cheap, and slower to converge) get more:
    a convolution whose receptive field is at most a tenth of the input side.
    A unit rendered on demand and one rendered by ``precompute all`` (or
    ``precompute vis`` with these settings) share the recipe's digest.
    """

    steps: int = 128
    early_steps: int = 256
    size: int = 128

    def steps_for(self, layer: LayerSpec, input_size: int) -> int:
        return self.early_steps if self.is_early(layer, input_size) else self.steps

    @staticmethod
    def is_early(layer: LayerSpec, input_size: int) -> bool:
        """A stem convolution: its receptive field at most a tenth of the input side (``STEM_FIELD``).

        Such a unit answers fine, high-frequency patterns, which the Fourier basis's 1/f scaling makes slow to
        change, so it converges in more steps. At 224 px this is InceptionV1's conv2d0-2 (7, 11, 19 px; mixed3a
        sees 59), SqueezeNet's conv1 to fire3's squeeze, MobileNetV2's and EfficientNet-Lite0's convolutions up to
        19 px (the same layers as the rule it replaced, a conv at most 4 pixels apart); at 32 px, a 3 x 3 stem.
        """
        return layer.kind == "conv" and layer.receptive_field * STEM_FIELD <= input_size


ON_DEMAND = Defaults()
