"""InceptionV1 as TensorFlow's "inception5h" graph defines it: OpenAI Microscope's and Lucid's ``InceptionV1``.

The layout follows ../shared/models/inception5h: RGB input 0..255 minus 117,
convolutions and pools padded as TensorFlow's "SAME" (conv2d0's 7x7/2 pads
2 before and 3 after, every 3/2 max pool 0 before and 1 after), local response
normalizations after maxpool0 and conv2d2, inception blocks whose pool branch
is a 3x3/1 max pool and a 1x1 ``pool_reduce``, and a 1,008-way classifier
(``softmax2``) on a global average pool of mixed5b.

Module paths give the layer names people cite (``mixed4c``,
``mixed4c_3x3_bottleneck``); the graph's own names (``mixed4c_3x3_bottleneck_w``)
and Lucent's port (``mixed4c_3x3_bottleneck_pre_relu_conv.weight``) map onto
them in `precompute.models.sources`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from precompute.models.nets.same import same_padding

#: (block, 1x1, 3x3 bottleneck, 3x3, 5x5 bottleneck, 5x5, pool reduce): the graph's branch widths.
BLOCKS: tuple[tuple[str, int, int, int, int, int, int], ...] = (
    ("mixed3a", 64, 96, 128, 16, 32, 32),
    ("mixed3b", 128, 128, 192, 32, 96, 64),
    ("mixed4a", 192, 96, 204, 16, 48, 64),
    ("mixed4b", 160, 112, 224, 24, 64, 64),
    ("mixed4c", 128, 128, 256, 24, 64, 64),
    ("mixed4d", 112, 144, 288, 32, 64, 64),
    ("mixed4e", 256, 160, 320, 32, 128, 128),
    ("mixed5a", 256, 160, 320, 48, 128, 128),
    ("mixed5b", 384, 192, 384, 48, 128, 128),
)
#: Blocks after a 3/2 max pool (maxpool1, maxpool4, maxpool10 in the graph).
POOLED = {"mixed3a": "maxpool1", "mixed4a": "maxpool4", "mixed5a": "maxpool10"}
CLASSES = 1008
#: TensorFlow's local_response_normalization in the graph: depth_radius 4, bias 1, alpha 1e-4, beta 0.5.
#: TensorFlow multiplies alpha by the squared sum itself; PyTorch divides it by the window first.
LRN_RADIUS, LRN_ALPHA, LRN_BETA, LRN_BIAS = 4, 1e-4, 0.5, 1.0
BRANCHES = ("1x1", "3x3_bottleneck", "3x3", "5x5_bottleneck", "5x5", "pool_reduce")


def lrn() -> nn.LocalResponseNorm:
    size = 2 * LRN_RADIUS + 1
    return nn.LocalResponseNorm(size, alpha=LRN_ALPHA * size, beta=LRN_BETA, k=LRN_BIAS)


class Block(nn.Module):
    """An inception block; ``pool`` is its pool branch's 3x3/1 max pool (padding 1, as SAME)."""

    def __init__(self, inputs: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        c1, c3r, c3, c5r, c5, cp = widths
        for name, (source, width, kernel) in zip(BRANCHES, ((inputs, c1, 1), (inputs, c3r, 1), (c3r, c3, 3),
                                                            (inputs, c5r, 1), (c5r, c5, 5), (inputs, cp, 1))):
            self.add_module(name, nn.Conv2d(source, width, kernel, padding=kernel // 2))
        self.pool = nn.MaxPool2d(3, 1, padding=1)

    def branch(self, name: str) -> nn.Conv2d:
        return getattr(self, name)

    def forward(self, x: Tensor) -> Tensor:
        relu = torch.relu
        parts = [
            relu(self.branch("1x1")(x)),
            relu(self.branch("3x3")(relu(self.branch("3x3_bottleneck")(x)))),
            relu(self.branch("5x5")(relu(self.branch("5x5_bottleneck")(x)))),
            relu(self.branch("pool_reduce")(self.pool(x))),
        ]
        return torch.cat(parts, 1)


class Inception5h(nn.Module):
    def __init__(self, input_size: int = 224) -> None:
        super().__init__()
        self.conv2d0_pad = same_padding(input_size, 7, 2)
        self.conv2d0 = nn.Conv2d(3, 64, 7, 2)
        size = input_size // 2
        self.maxpool0_pad = same_padding(size, 3, 2)  # zeros stand for -inf: the pooled values are ReLU outputs
        self.maxpool0 = nn.MaxPool2d(3, 2)
        self.localresponsenorm0 = lrn()
        self.conv2d1 = nn.Conv2d(64, 64, 1)
        self.conv2d2 = nn.Conv2d(64, 192, 3, padding=1)
        self.localresponsenorm1 = lrn()
        size, inputs = size // 2, 192
        for block, *widths in BLOCKS:
            if block in POOLED:
                self.add_module(f"{POOLED[block]}_pad", same_padding(size, 3, 2))
                self.add_module(POOLED[block], nn.MaxPool2d(3, 2))
                size //= 2
            self.add_module(block, Block(inputs, tuple(widths)))
            inputs = widths[0] + widths[2] + widths[4] + widths[5]
        self.avgpool0 = nn.AdaptiveAvgPool2d(1)
        self.softmax2 = nn.Linear(inputs, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool0(self.maxpool0_pad(torch.relu(self.conv2d0(self.conv2d0_pad(x)))))
        x = torch.relu(self.conv2d1(self.localresponsenorm0(x)))
        x = self.localresponsenorm1(torch.relu(self.conv2d2(x)))
        for block, *_ in BLOCKS:
            if block in POOLED:
                x = getattr(self, POOLED[block])(getattr(self, f"{POOLED[block]}_pad")(x))
            x = getattr(self, block)(x)
        return self.softmax2(torch.flatten(self.avgpool0(x), 1))


def parameter_names() -> dict[str, str]:
    """The graph's layer names (``mixed4c_3x3_bottleneck``) to this module's paths (``mixed4c.3x3_bottleneck``)."""
    found = {"conv2d0": "conv2d0", "conv2d1": "conv2d1", "conv2d2": "conv2d2", "softmax2": "softmax2"}
    for block, *_ in BLOCKS:
        found.update({f"{block}_{branch}": f"{block}.{branch}" for branch in BRANCHES})
    return found
