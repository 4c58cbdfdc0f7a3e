"""The interface every network the stages run implements, whatever its architecture.

A `Network` is an ``nn.Module`` built for a `ModelSpec` and holding its
weights. The stages and the worker use only what is declared here:

- ``net(images, layers, sink)``: pre-ReLU activations by layer name for RGB
  images in [0, 1], computing no further than the last layer asked for;
- ``net.logits(images)``;
- ``net.preprocess(images)``: the spec's channel order, range, mean and std;
- ``net.linear_map(source, target)``: the kernels circuits rank (the linear
  map between two unit layers once ReLUs, pools and normalizations are
  replaced by their linear stand-ins), and ``net.approximation`` for the
  stand-ins a pair's weights should be read with.

InceptionV1 (BVLC) is written by hand (`precompute.models.inceptionv1`);
every other network is traced from its module graph
(`precompute.models.traced`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from app.core.errors import MicroscopeError
from app.core.zoo import LayerSpec, ModelSpec
from precompute.methods.kernels import Kernel

#: ITU-R 601-2 luma weights of R, G and B: how PIL's ``convert("L")`` reads a colour image as grayscale (a
#: grayscale file read as RGB has R = G = B, so its luma is its own value).
LUMA = (0.299, 0.587, 0.114)
#: Receives each requested activation as soon as it is computed.
Sink = Callable[[str, Tensor], None]

#: Stand-ins every network's circuits use (Distill, "Visualizing Weights").
STAND_INS = "relu=identity, maxpool=avgpool, batchnorm=its affine map folded into the conv before it, lrn=identity"


@dataclass(frozen=True)
class Piece:
    """The kernel from a source layer to a run of consecutive target units starting at ``offset``."""

    offset: int
    kernel: Kernel
    #: Composed across more than one convolution, or through a stand-in.
    expanded: bool


class Network(nn.Module):
    """A model's network: its spec, its input convention, activations by layer name and linear maps."""

    #: The stand-ins behind ``linear_map`` (recorded in each circuits recipe).
    stand_ins = STAND_INS

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        channel_order = [2, 1, 0] if spec.channel_order == "BGR" else [0, 1, 2]
        self.register_buffer("channel_order", torch.tensor(channel_order), persistent=False)
        self.register_buffer("luma", torch.tensor(LUMA).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, spec.channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, spec.channels, 1, 1), persistent=False)
        self.scale = spec.value_range[1] - spec.value_range[0]
        self.shift = spec.value_range[0]

    @property
    def logits_layer(self) -> LayerSpec:
        layer = self.spec.logits
        if layer is not None:
            return layer
        raise MicroscopeError(f"{self.spec.name} has no classifier (its output is a feature map): this needs a class; "
                              "ask for a unit instead")

    def preprocess(self, images: Tensor) -> Tensor:
        """RGB in [0, 1] to the network's own input convention (a 1-channel network's: the images' luma); a network
        of other channel counts reads its channels as given (`precompute.running.images.Planes`), scaled as RGB would be."""
        if self.spec.channels == 1:
            x = (images * self.luma).sum(dim=1, keepdim=True) * self.scale + self.shift
        elif self.spec.channels == 3:
            x = images.index_select(1, self.channel_order) * self.scale + self.shift
        else:
            x = images * self.scale + self.shift
        return (x - self.mean) / self.std  # a std of 1 divides exactly

    def forward(self, images: Tensor, layers: Iterable[str] | None = None, sink: Sink | None = None) -> dict[str, Tensor]:
        """Pre-ReLU activations of ``layers`` (all unit layers if None), computing no further than needed.

        With a ``sink``, each activation goes to it (none is kept: the result is empty).
        """
        raise NotImplementedError

    def logits(self, images: Tensor) -> Tensor:
        name = self.logits_layer.name
        return self(images, (name,))[name]

    def linear_map(self, source: LayerSpec, target: LayerSpec) -> tuple[Piece, ...]:
        """The kernels from ``source``'s units to ``target``'s through the linear stand-ins."""
        raise NotImplementedError

    def approximation(self, source: LayerSpec, target: LayerSpec, indirect: bool) -> str | None:
        """What a pair's weights hide beyond the stand-ins everyone uses, if anything."""
        return None

    def spliced(self, layer: str, edit: Callable[[Tensor], Tensor], output: str | None = None) -> Callable[[Tensor], Tensor]:
        """Logits of RGB images (or ``output``'s pre-ReLU activations, a layer after ``layer``) with ``layer``'s
        output (after its ReLU, what the next layers read) replaced by ``edit`` of it: how a factorization's
        reconstruction is scored (issue 22), and how an ablation or Grad-CAM reaches into a layer (issue 23)."""
        raise MicroscopeError(f"{self.spec.name}'s network cannot splice a layer's output (a traced network can)")

    def wanted(self, layers: Iterable[str] | None) -> set[str]:
        """The layer names asked for, checked (`UnknownLayer` suggests the nearest)."""
        names = set(self.spec.layer_names if layers is None else layers)
        for name in names:
            self.spec.layer(name)
        return names
