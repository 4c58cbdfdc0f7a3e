"""TensorFlow's "SAME" padding as a module the tracer sees.

TensorFlow pads a window so that the output has ``ceil(size / stride)``
positions and, when the total padding is odd, puts the extra row and column
at the bottom and right. PyTorch's symmetric ``padding=`` cannot say that,
and networks trained in TensorFlow lose several points of accuracy without
it (../shared/models/README.md). The padding depends on the input size, so
the modules are built for the network's one input size.
"""

from __future__ import annotations

from torch import nn


def same_padding(size: int, kernel: int, stride: int) -> nn.Module:
    """The padding before a ``kernel``/``stride`` window over a ``size``-sided map; Identity where none."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    before = total // 2
    if total == 0:
        return nn.Identity()
    return nn.ZeroPad2d((before, total - before, before, total - before))


def same_size(size: int, stride: int) -> int:
    return -(-size // stride)
