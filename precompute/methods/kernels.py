"""Linear maps between layers as convolution kernels, and their composition.

Following Distill's "Visualizing Weights" (Olah et al. 2020), the weight
between two units that are not directly connected is the kernel of the
linear map between them once the non-linearities in between are replaced by
linear stand-ins:

- ReLU -> identity (the "expanded weights" of the article);
- max pool -> average pool over the same window (the linear map that treats
  every position of the window alike);
- local response normalization -> identity. This is an approximation, not
  a near-identity: on the shared ImageNet sample its gain is well below one
  (see `LRN_GAIN`), and it varies with the image. The pairs that cross an LRN
  (conv2d0 -> conv2d1, conv2d2 -> mixed3a, and the indirect pairs over them)
  say so in their recipes and on their pages, so their weights read as
  relative strengths;
- the global average pool before the classifier -> the mean over positions,
  so the summed kernel is the classifier weight itself.

A `Kernel` knows its stride and padding in the input grid, so composing two
keeps track of where each tap lands; the autograd test in
tests/test_circuits.py checks composition against the Jacobian of the
stand-in network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Kernel:
    """``weights`` (out, in, k, k): output position p reads input ``p * stride - padding + (0..k-1)``."""

    weights: Tensor
    stride: int = 1
    padding: int = 0

    @property
    def size(self) -> int:
        return int(self.weights.shape[-1])

    @classmethod
    def of_conv(cls, weights: Tensor, stride: int = 1, padding: int | None = None, groups: int = 1) -> Kernel:
        """A convolution's kernel (``padding`` defaults to half the kernel); grouped weights made dense."""
        weights = weights.detach().float().cpu()
        if groups > 1:
            out, part = weights.shape[0], weights.shape[1]
            dense = weights.new_zeros(out, part * groups, *weights.shape[2:])
            per_group = out // groups
            for group in range(groups):
                rows = slice(group * per_group, (group + 1) * per_group)
                dense[rows, group * part : (group + 1) * part] = weights[rows]
            weights = dense
        return cls(weights, stride, weights.shape[-1] // 2 if padding is None else padding)

    @classmethod
    def identity(cls, channels: int) -> Kernel:
        return cls(torch.eye(channels)[:, :, None, None])

    def after(self, first: Kernel) -> Kernel:
        """This kernel applied to the output of ``first``: (out, first.in, k', k')."""
        size = (self.size - 1) * first.stride + first.size
        out = self.weights.new_zeros(self.weights.shape[0], first.weights.shape[1], size, size)
        for a in range(self.size):
            for b in range(self.size):
                tap = torch.einsum("om,mipq->oipq", self.weights[:, :, a, b], first.weights)
                out[:, :, first.stride * a : first.stride * a + first.size, first.stride * b : first.stride * b + first.size] += tap
        return Kernel(out, self.stride * first.stride, first.padding + self.padding * first.stride)

    def after_pool(self, size: int, stride: int, padding: int) -> Kernel:
        """This kernel applied to an average pool of every channel (the max pool's linear stand-in)."""
        full = (self.size - 1) * stride + size
        out = self.weights.new_zeros(*self.weights.shape[:2], full, full)
        share = self.weights / (size * size)
        for p in range(size):
            for q in range(size):
                out[:, :, p : p + stride * (self.size - 1) + 1 : stride, q : q + stride * (self.size - 1) + 1 : stride] += share
        return Kernel(out, self.stride * stride, padding + self.padding * stride)

    def then_pool(self, size: int, stride: int, padding: int) -> Kernel:
        """An average pool of every channel applied to this kernel's output (the max pool's stand-in after it)."""
        full = (size - 1) * self.stride + self.size
        out = self.weights.new_zeros(*self.weights.shape[:2], full, full)
        share = self.weights / (size * size)
        for a in range(size):
            for b in range(size):
                out[:, :, self.stride * a : self.stride * a + self.size, self.stride * b : self.stride * b + self.size] += share
        return Kernel(out, self.stride * stride, self.padding + padding * self.stride)

    @classmethod
    def stacked(cls, kernels: list[Kernel]) -> Kernel:
        """Kernels of one stride with the same input, as one kernel whose outputs follow each other.

        Each is placed by its padding so every tap keeps the input position it reads.
        """
        stride = kernels[0].stride
        assert all(kernel.stride == stride for kernel in kernels), "stacked kernels share a stride"
        padding = max(kernel.padding for kernel in kernels)
        size = max(padding - kernel.padding + kernel.size for kernel in kernels)
        parts = []
        for kernel in kernels:
            start = padding - kernel.padding
            end = size - start - kernel.size
            parts.append(torch.nn.functional.pad(kernel.weights, (start, end, start, end)))
        return cls(torch.cat(parts), stride, padding)

    def plus(self, other: Kernel) -> Kernel:
        """The sum of two maps of one input (a residual block's paths), each tap kept at its input position."""
        assert self.stride == other.stride, "summed kernels share a stride"
        padding = max(self.padding, other.padding)
        size = max(padding - kernel.padding + kernel.size for kernel in (self, other))
        total = self.weights.new_zeros(*self.weights.shape[:2], size, size)
        for kernel in (self, other):
            start = padding - kernel.padding
            total[:, :, start : start + kernel.size, start : start + kernel.size] += kernel.weights
        return Kernel(total, self.stride, padding)

    def scaled(self, factors: Tensor) -> Kernel:
        """Each output channel times its factor (a BatchNorm folded into the map before it)."""
        return Kernel(self.weights * factors.detach().float().cpu()[:, None, None, None], self.stride, self.padding)

    def summed(self) -> Tensor:
        """(out, in): the total weight of each connection, its sign and strength."""
        return self.weights.sum(dim=(2, 3))

    def norms(self) -> Tensor:
        """(out, in): the L2 norm of each connection's kernel."""
        return self.weights.flatten(2).norm(dim=2)

    def l1_norms(self) -> Tensor:
        """(out, in): the L1 norm of each connection's kernel (Filan et al.'s weight of a filter as one edge)."""
        return self.weights.abs().sum(dim=(2, 3))
