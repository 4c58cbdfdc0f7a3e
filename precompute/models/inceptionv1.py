"""InceptionV1 (BVLC) in plain PyTorch, built from its spec, with readable named layers.

``net(images, layers=("mixed4a",))`` returns the pre-ReLU activations of the
named unit layers and stops computing after the last one it needs, so a
feature visualization of ``mixed3b`` never pays for ``mixed5b``. Images come
in as RGB in [0, 1]; the conversion to the model's own input convention (BGR,
0..255 minus the mean, for the Caffe weights) is declared in the spec and
applied inside the module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from app.core.errors import MicroscopeError
from app.core.zoo import LayerSpec, ModelSpec
from app.core.zoo.inceptionv1 import POOLED_BLOCKS
from precompute.methods.kernels import Kernel
from precompute.models.base import Network, Piece, Sink


class _BandedNorm(torch.autograd.Function):
    """``y = x * (k + conv(x^2, band)) ** -beta`` with a hand-written backward.

    Autograd's own backward of the fractional power costs a second ``pow``;
    the closed form needs one more banded convolution and a few products:
    dL/dx = g d - 2 beta x conv(g y / s, band), with the band symmetric.
    """

    @staticmethod
    def forward(ctx, x: Tensor, band: Tensor, k: float, beta: float) -> Tensor:  # noqa: ANN001
        band = band.to(x.dtype)
        s = F.conv2d(x * x, band).add_(k)
        d = s.pow(-beta)
        y = x * d
        ctx.save_for_backward(x, y, d, s, band)
        ctx.beta = beta
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None]:  # noqa: ANN001
        x, y, d, s, band = ctx.saved_tensors
        spread = F.conv2d(torch.mul(grad, y).div_(s).to(band.dtype), band)
        return torch.addcmul(grad * d, x, spread, value=-2 * ctx.beta), None, None, None


class LocalResponseNorm(nn.Module):
    """Caffe's across-channel LRN, ``x / (k + alpha/n * sum_window x^2) ** beta``.

    The windowed sum over neighbouring channels is a fixed banded 1x1
    convolution, which is faster than ``nn.LocalResponseNorm``'s padding and
    pooling and works with channels-last tensors (issue 3's measurements).
    """

    def __init__(self, channels: int, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0) -> None:
        super().__init__()
        index = torch.arange(channels)
        band = ((index[:, None] - index[None, :]).abs() <= size // 2).float() * (alpha / size)
        self.register_buffer("band", band[:, :, None, None], persistent=False)
        self.beta, self.k = beta, k

    def forward(self, x: Tensor) -> Tensor:
        return _BandedNorm.apply(x, self.band, self.k, self.beta)


class SpaceToDepthConv(nn.Conv2d):
    """A stride-2 convolution computed as a stride-1 one on a space-to-depth view of its input.

    Same parameters and numbers as ``nn.Conv2d``; on CPU the backward pass to
    the input (what feature visualization needs) takes about half as long for
    the 3-channel stem, because dense stride-1 kernels are better optimized
    than strided ones.
    """

    def forward(self, x: Tensor) -> Tensor:
        kernel, padding = self.kernel_size[0], self.padding[0]
        even = kernel + kernel % 2
        weight = F.pad(self.weight, (0, even - kernel, 0, even - kernel))
        out_channels, in_channels = weight.shape[:2]
        weight = weight.reshape(out_channels, in_channels, even // 2, 2, even // 2, 2).permute(0, 1, 3, 5, 2, 4)
        weight = weight.reshape(out_channels, in_channels * 4, even // 2, even // 2)
        height, width = x.shape[-2:]
        padded = F.pad(x, (padding, padding + (width + 2 * padding) % 2, padding, padding + (height + 2 * padding) % 2))
        unshuffled = F.pixel_unshuffle(padded, 2).contiguous(memory_format=torch.channels_last)
        return F.conv2d(unshuffled, weight, self.bias)


def _max_pool(x: Tensor) -> Tensor:
    return F.max_pool2d(x, kernel_size=3, stride=2, ceil_mode=True)


class _Capture:
    """Collects the requested activations (or hands them to a sink) and says when the rest can be skipped."""

    def __init__(self, wanted: set[str], sink: Sink | None,
                 edits: Mapping[str, Callable[[Tensor], Tensor]] | None = None) -> None:
        self.wanted = wanted
        self.sink = sink
        self.edits = edits or {}
        self.found: dict[str, Tensor] = {}
        self.seen = 0

    def add(self, name: str, value: Tensor) -> None:
        if name not in self.wanted:
            return
        self.seen += 1
        if self.sink is None:
            self.found[name] = value
        else:
            self.sink(name, value)

    def flowing(self, name: str, output: Tensor) -> Tensor:
        """A layer's output after its ReLU, as the next layers read it: edited where `InceptionV1.spliced` says."""
        edit = self.edits.get(name)
        return output if edit is None else edit(output)

    @property
    def done(self) -> bool:
        return self.seen == len(self.wanted)


class Inception(nn.Module):
    """One inception block; the block output is the concatenation of its four branches."""

    def __init__(self, name: str, convs: Mapping[str, nn.Conv2d]) -> None:
        super().__init__()
        self.name = name
        self.convs = nn.ModuleDict(convs)
        #: A module, not ``F.relu``, so rules that rewrite a ReLU's gradient (Captum's guided backprop) reach it.
        self.relu = nn.ReLU()

    def forward(self, x: Tensor, capture: _Capture) -> Tensor:
        branch = self._branch(capture)
        outputs = (
            branch("1x1", x),
            branch("3x3", self.relu(branch("3x3_bottleneck", x))),
            branch("5x5", self.relu(branch("5x5_bottleneck", x))),
            branch("pool_reduce", F.max_pool2d(x, kernel_size=3, stride=1, padding=1)),
        )
        pre = torch.cat(outputs, dim=1)
        capture.add(self.name, pre)
        return capture.flowing(self.name, self.relu(pre))

    def _branch(self, capture: _Capture):  # noqa: ANN202 - a small closure
        def run(suffix: str, x: Tensor) -> Tensor:
            pre = self.convs[suffix](x)
            capture.add(f"{self.name}_{suffix}", pre)
            return pre

        return run


class InceptionV1(Network):
    """The network of ``spec``; parameters are loaded separately (see `precompute.models.bvlc`)."""

    stand_ins = "relu=identity, maxpool=avgpool, lrn=identity"  # no batchnorm in this network

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.convs = nn.ModuleDict({layer.name: self._conv(layer) for layer in spec.layers if layer.kind == "conv"})
        self.relu = nn.ReLU()  # a module for the same reason as `Inception.relu`
        self.lrn0 = LocalResponseNorm(64)
        self.lrn1 = LocalResponseNorm(192)
        self.blocks = nn.ModuleList(
            Inception(
                layer.name,
                {
                    branch.name.removeprefix(f"{layer.name}_"): self._conv(branch)
                    for branch in spec.layers
                    if branch.kind == "branch" and branch.block == layer.name
                },
            )
            for layer in spec.layers
            if layer.kind == "mixed"
        )
        logits = next(layer for layer in spec.layers if layer.kind == "logits")
        self.classifier = nn.Linear(spec.layer(logits.inputs[0]).channels, logits.channels)
        self.logits_name = logits.name

    def _conv(self, layer: LayerSpec) -> nn.Conv2d:
        in_channels = sum(self.spec.layer(name).channels for name in layer.inputs) if layer.inputs else 3
        if layer.name == "conv2d0":
            return SpaceToDepthConv(in_channels, layer.channels, layer.kernel, stride=2, padding=layer.kernel // 2)
        return nn.Conv2d(in_channels, layer.channels, layer.kernel, padding=layer.kernel // 2)

    def parameterized(self) -> dict[str, nn.Conv2d | nn.Linear]:
        """The module holding each unit layer's weights, by layer name."""
        modules: dict[str, nn.Conv2d | nn.Linear] = dict(self.convs.items())  # type: ignore[arg-type]
        for block in self.blocks:
            modules.update((f"{block.name}_{suffix}", conv) for suffix, conv in block.convs.items())
        modules[self.logits_name] = self.classifier
        return modules

    def forward(self, images: Tensor, layers: Iterable[str] | None = None, sink: Sink | None = None) -> dict[str, Tensor]:
        """Pre-ReLU activations of ``layers`` (all unit layers if None), computing no further than needed.

        With a ``sink``, each activation goes to it the moment it is computed
        (while it is still in cache) and none is kept: the result is empty.
        """
        return self._run(images, _Capture(self.wanted(layers), sink))

    def cascade_groups(self) -> list[tuple[str, list[nn.Module]]]:
        """The weight layers from the top down as the randomization test re-initializes them (issue 23): the
        classifier, each inception block, then the stem's convolutions."""
        return ([(self.logits_name, [self.classifier])] + [(block.name, list(block.convs.values()))
                                                           for block in reversed(self.blocks)]
                + [(name, [conv]) for name, conv in reversed(list(self.convs.items()))])

    def spliced(self, layer: str, edit: Callable[[Tensor], Tensor], output: str | None = None) -> Callable[[Tensor], Tensor]:
        """Logits (or ``output``'s activations) with ``layer``'s output after its ReLU replaced by ``edit`` of it
        (see `Network.spliced`)."""
        if self.spec.layer(layer).kind not in ("conv", "mixed"):
            raise MicroscopeError(f"only a trunk layer's output can be spliced, not {layer}'s")
        out = output or self.logits_name
        self.spec.layer(out)
        return lambda images: self._run(images, _Capture({out}, None, {layer: edit}))[out]

    def _run(self, images: Tensor, capture: _Capture) -> dict[str, Tensor]:
        x = self.preprocess(images)
        for name in ("conv2d0", "conv2d1", "conv2d2"):
            pre = self.convs[name](x)
            capture.add(name, pre)
            if capture.done:
                return capture.found
            x = capture.flowing(name, self.relu(pre))
            if name == "conv2d0":
                x = self.lrn0(_max_pool(x))
            elif name == "conv2d2":
                x = _max_pool(self.lrn1(x))
        for block in self.blocks:
            if block.name in POOLED_BLOCKS:
                x = _max_pool(x)
            x = block(x, capture)
            if capture.done:
                return capture.found
        capture.add(self.logits_name, self.classifier(x.mean(dim=(2, 3))))
        return capture.found

    # Circuits: the linear maps of the three kinds of pairs (see `precompute.stages.circuits`).

    def linear_map(self, source: LayerSpec, target: LayerSpec) -> tuple[Piece, ...]:
        if target.kind == "branch":
            return (Piece(0, self._branch_kernel(target), bool(target.pools)),)
        if source.name == target.previous:
            return self._main_pieces(target)
        if source.name == self.spec.layer(str(target.previous)).previous:
            first = Kernel.stacked([piece.kernel for piece in self._main_pieces(self.spec.layer(str(target.previous)))])
            return tuple(Piece(piece.offset, piece.kernel.after(first), True) for piece in self._main_pieces(target))
        raise ValueError(f"no linear map from {source.name} to {target.name} in {self.spec.name}")

    def _branch_kernel(self, layer: LayerSpec) -> Kernel:
        """The map from ``layer.inputs[0]`` to ``layer``: its convolution, after the pools in front of it."""
        conv = self.parameterized()[layer.name]
        kernel = Kernel.of_conv(conv.weight, stride=conv.stride[0])
        for pool in reversed(layer.pools):
            kernel = kernel.after_pool(pool.size, pool.stride, pool.padding)
        return kernel

    def _main_pieces(self, layer: LayerSpec) -> tuple[Piece, ...]:
        """The map from ``layer.previous`` to ``layer``, one piece per branch of a block."""
        if layer.kind == "logits":
            weights = self.classifier.weight
            return (Piece(0, Kernel(weights.detach().float()[:, :, None, None]), False),)
        if layer.kind == "conv":
            return (Piece(0, self._branch_kernel(layer), bool(layer.pools)),)
        pieces, offset = [], 0
        for name in layer.inputs:
            branch = self.spec.layer(name)
            kernel, expanded = self._branch_kernel(branch), bool(branch.pools)
            if branch.inputs[0] != layer.previous:  # a spatial conv after its bottleneck
                kernel, expanded = kernel.after(self._branch_kernel(self.spec.layer(branch.inputs[0]))), True
            pieces.append(Piece(offset, kernel, expanded))
            offset += branch.channels
        return tuple(pieces)

    def approximation(self, source: LayerSpec, target: LayerSpec, indirect: bool) -> str | None:
        """Pairs whose map crosses a local response normalization say what the identity stand-in hides."""
        crossed = [target.name] if target.name in LRN_GAINS else []
        if indirect and target.previous in LRN_GAINS:
            crossed.append(str(target.previous))
        if target.kind == "branch" and target.block == "mixed3a" and source.name == "conv2d2":
            crossed.append("mixed3a")
        if not crossed:
            return None
        return LRN_NOTE.format(gain=" and ".join(LRN_GAINS[name] for name in crossed))


#: Pairs whose map crosses a local response normalization, and what the identity stand-in hides
#: (measured by bench/lrn_gain.py over 200 images of the shared ImageNet sample).
LRN_NOTE = ("crosses a local response normalization, taken as the identity: its measured gain is "
            "{gain}, so these weights are relative strengths")
LRN_GAINS = {"conv2d1": "0.65 (median; per channel 0.22 to 0.94)", "mixed3a": "0.955 (median; per channel 0.69 to 0.99)"}
