"""MobileNetV2 1.0/224 in TF-slim's layout and names (``Conv``, ``expanded_conv_3.expand``, ``Conv_1``, ``Logits``).

Batch norm is folded into every convolution of the TFLite file, so each conv
has a bias and no BatchNorm follows it. Convolutions pad as TensorFlow's
"SAME". The classifier's background output (TF-slim's class 0) is left out:
``Logits`` has the 1,000 ImageNet classes in the sorted-synset order.
"""

from __future__ import annotations

from torch import Tensor, nn

from precompute.models.nets.same import same_padding, same_size

#: (expand ratio, first stride, out channels, repeats) of the inverted residual stages.
STAGES = ((1, 1, 16, 1), (6, 2, 24, 2), (6, 2, 32, 3), (6, 2, 64, 4), (6, 1, 96, 3), (6, 2, 160, 3), (6, 1, 320, 1))


class InvertedResidual(nn.Module):
    def __init__(self, size: int, inputs: int, outputs: int, ratio: int, stride: int) -> None:
        super().__init__()
        hidden = inputs * ratio
        self.expand = nn.Conv2d(inputs, hidden, 1) if ratio != 1 else None
        self.depthwise_pad = same_padding(size, 3, stride)
        self.depthwise = nn.Conv2d(hidden, hidden, 3, stride, groups=hidden)
        self.project = nn.Conv2d(hidden, outputs, 1)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: Tensor) -> Tensor:
        y = nn.functional.relu6(self.expand(x)) if self.expand is not None else x
        y = self.project(nn.functional.relu6(self.depthwise(self.depthwise_pad(y))))
        return x + y if self.residual else y


class MobileNetV2(nn.Module):
    def __init__(self, input_size: int = 224, classes: int = 1000) -> None:
        super().__init__()
        self.Conv_pad = same_padding(input_size, 3, 2)
        self.Conv = nn.Conv2d(3, 32, 3, 2)
        size, inputs, index = same_size(input_size, 2), 32, 0
        for ratio, stride, outputs, repeats in STAGES:
            for repeat in range(repeats):
                first = stride if repeat == 0 else 1
                name = "expanded_conv" if index == 0 else f"expanded_conv_{index}"
                self.add_module(name, InvertedResidual(size, inputs, outputs, ratio, first))
                size, inputs, index = same_size(size, first), outputs, index + 1
        self.blocks = index
        self.Conv_1 = nn.Conv2d(inputs, 1280, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.Logits = nn.Linear(1280, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.relu6(self.Conv(self.Conv_pad(x)))
        for index in range(self.blocks):
            x = getattr(self, "expanded_conv" if index == 0 else f"expanded_conv_{index}")(x)
        x = self.pool(nn.functional.relu6(self.Conv_1(x)))
        return self.Logits(x.flatten(1))
