"""Frozen, torch-free descriptions of models and their layers.

Models and layers are data (see shared/STYLE.md, rule 2): the precompute job
builds networks from these specs, the store is catalogued from them and the
web server reads them without ever importing torch.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Literal

from app.core.errors import UnknownLayer

#: conv: a convolution on the network's trunk; mixed: a block's concatenated branches; residual: a
#: block's sum of its paths (identity and convolutions); branch: a convolution inside a block;
#: linear: a fully connected layer; logits: the classifier's output; nmf and sae: directions in
#: another layer's activation space (issue 22: NMF groups, sparse dictionary features).
LayerKind = Literal["conv", "mixed", "residual", "branch", "linear", "logits", "nmf", "sae"]

#: Kinds of derived layers: each unit is a direction over its base layer's units (``inputs[0]``).
DERIVED_KINDS: frozenset[str] = frozenset({"nmf", "sae"})

#: Kinds whose units are counted as "main" units (the 5,808 of InceptionV1): the trunk, which
#: every path from the input to the output crosses.
MAIN_KINDS: frozenset[str] = frozenset({"conv", "mixed", "residual", "linear"})


@dataclass(frozen=True)
class Pool:
    """A max pool on the path from a layer's input to its convolution."""

    size: int
    stride: int
    padding: int = 0


@dataclass(frozen=True)
class LayerSpec:
    """One layer whose channels are units people browse.

    Geometry is measured in input pixels at the model's input size: ``size``
    is the side of the layer's square activation map, ``stride`` the distance
    between neighbouring positions and ``receptive_field`` the side of the
    square of input pixels that one position sees.
    """

    name: str
    channels: int
    kind: LayerKind
    size: int
    stride: int
    receptive_field: int
    #: Input pixel at the centre of position (0, 0).
    offset: int
    #: Unit layers whose outputs this layer reads (concatenated, in order).
    inputs: tuple[str, ...]
    #: For a main layer, the main layer before it (circuits expand across blocks).
    previous: str | None = None
    #: Convolution kernel side (0 where the layer is a concatenation).
    kernel: int = 0
    #: Name of the parameter files this layer's weights come from.
    weights: str | None = None
    #: The inception block a branch or block output belongs to.
    block: str | None = None
    #: Max pools between the input layer's activations and this layer's convolution, in order.
    pools: tuple[Pool, ...] = ()
    #: A derived layer's factorization (its recipe's digest): every recipe made from its directions names it.
    factorization: str | None = None

    @property
    def is_main(self) -> bool:
        return self.kind in MAIN_KINDS

    @property
    def is_derived(self) -> bool:
        """Its units are directions over ``inputs[0]``'s (`derived_layer`)."""
        return self.kind in DERIVED_KINDS

    def position_box(self, y: int, x: int, image_size: int) -> tuple[int, int, int, int]:
        """The receptive field of position (y, x) as (left, top, right, bottom), clipped to the image."""
        return position_box(self.offset, self.stride, self.receptive_field, y, x, image_size)


def derived_name(base: str, method: str) -> str:
    """The name of the derived layer of ``method`` over ``base``: ``mixed4c_nmf``, ``mixed3b_sae``."""
    return f"{base}_{method}"


def derived_layer(base: LayerSpec, method: str, components: int) -> LayerSpec:
    """The layer of ``components`` directions over ``base``: its geometry, one unit per direction."""
    if method not in DERIVED_KINDS:
        raise ValueError(f"unknown factorization {method!r}")
    return LayerSpec(name=derived_name(base.name, method), channels=components, kind=method,  # type: ignore[arg-type]
                     size=base.size, stride=base.stride, receptive_field=base.receptive_field, offset=base.offset,
                     inputs=(base.name,))


def position_box(offset: int, stride: int, receptive_field: int, y: int, x: int,
                 image_size: int) -> tuple[int, int, int, int]:
    """The input pixels position (y, x) of a grid sees, as (left, top, right, bottom), clipped to the image.

    ``offset`` is the input pixel at the centre of position (0, 0) (the store keeps it per layer,
    so the server needs no spec).
    """
    half = receptive_field // 2
    centre_y, centre_x = offset + y * stride, offset + x * stride
    left, top = max(0, centre_x - half), max(0, centre_y - half)
    right = min(image_size, centre_x - half + receptive_field)
    bottom = min(image_size, centre_y - half + receptive_field)
    return left, top, right, bottom


@dataclass(frozen=True)
class Framing:
    """How the examples stage frames an image: the centred square of its short side, resized to the input.

    No squashing (issue 9): the square's pixels map back to the original file
    exactly, and the same mapping serves the crops and the pages' boxes.
    """

    left: int
    top: int
    side: int

    @classmethod
    def of(cls, width: int, height: int) -> Framing:
        side = min(width, height)
        return cls((width - side) // 2, (height - side) // 2, side)

    def to_original(self, box: tuple[int, int, int, int], input_size: int) -> tuple[int, int, int, int]:
        """A box (left, top, right, bottom) of the input grid in the original image's pixels, never empty."""
        scale = self.side / input_size
        left, top = self.left + int(box[0] * scale), self.top + int(box[1] * scale)
        right = max(left + 1, self.left + round(box[2] * scale))
        bottom = max(top + 1, self.top + round(box[3] * scale))
        return left, top, min(right, self.left + self.side), min(bottom, self.top + self.side)


@dataclass(frozen=True)
class ClassLabel:
    index: int
    synset: str
    name: str


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's parameters come from when no local folder is given."""

    base_url: str
    #: Name of the local folder holding the files (e.g. under ``../shared/models``).
    folder: str
    #: Package resource (in ``app.core.zoo``) listing ``sha256  relative/path`` per file.
    checksums: str


@dataclass(frozen=True)
class ModelSpec:
    """A model: its input convention, its layers in network order, its classes."""

    name: str
    title: str
    description: str
    input_size: int
    #: Channel order the network's first convolution expects.
    channel_order: Literal["RGB", "BGR"]
    #: Pixel value range before the mean is subtracted.
    value_range: tuple[float, float]
    #: Per-channel mean subtracted from the pixels, in ``channel_order`` (one value per input channel).
    mean: tuple[float, ...]
    layers: tuple[LayerSpec, ...]
    classes: tuple[ClassLabel, ...]
    #: The BVLC-style folder of raw files; None where the network loads a state dict.
    weights: WeightsSource | None
    #: Resize used by the accuracy check of the weights (the README's figures): to a square of
    #: ``eval_resize`` ("square") or its short side to it ("short"), then the centre crop.
    eval_resize: int = 256
    eval_framing: Literal["square", "short"] = "square"
    eval_interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    #: Per-channel divisor applied after the mean, in ``channel_order`` (torchvision's normalization).
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    #: Input channels: 3 (RGB, in ``channel_order``), 1 (grayscale: the luma of the RGB images every stage
    #: works with, ITU-R 601-2 as PIL's ``convert("L")``), or any other count (arrays of that many channels:
    #: ``.npy`` or TIFF files, shown in false colour).
    channels: int = 3
    #: The network reads a map of fixed size somewhere (a ``Flatten`` then ``Linear`` over more than one
    #: position): it takes exactly ``input_size`` px, so renders are cropped or padded to it.
    fixed_input: bool = False

    def layer(self, name: str) -> LayerSpec:
        """The layer called ``name``; `UnknownLayer` names the nearest valid ones."""
        for layer in self.layers:
            if layer.name == name:
                return layer
        names = [layer.name for layer in self.layers]
        raise UnknownLayer(self.name, name, tuple(difflib.get_close_matches(name, names, n=3, cutoff=0.5)))

    def field_layer(self, layer: LayerSpec, unit: int) -> LayerSpec:
        """The layer whose receptive field a unit has: a block output's unit has its branch's."""
        if layer.kind != "mixed":
            return layer
        offset = 0
        for name in layer.inputs:
            branch = self.layer(name)
            if unit < offset + branch.channels:
                return branch
            offset += branch.channels
        raise IndexError(f"{layer.name} has no unit {unit}")

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(layer.name for layer in self.layers)

    @property
    def logits(self) -> LayerSpec | None:
        """The classifier's output layer; None for a backbone (its output is a feature map)."""
        return next((layer for layer in self.layers if layer.kind == "logits"), None)

    @property
    def main_layers(self) -> tuple[LayerSpec, ...]:
        return tuple(layer for layer in self.layers if layer.is_main)

    def unit_label(self, layer: LayerSpec, unit: int) -> str | None:
        """A unit's human label: the class name for logits, none otherwise."""
        return self.classes[unit].name if layer.kind == "logits" and unit < len(self.classes) else None

    def spatial_source(self, layer: LayerSpec) -> LayerSpec:
        """The nearest layer at or before ``layer`` with a spatial map (fully connected layers have none); a
        derived layer's is its base's."""
        while (layer.kind in ("linear", "logits") or layer.is_derived) and layer.inputs:
            layer = self.layer(layer.inputs[0])
        return layer
