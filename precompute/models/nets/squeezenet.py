"""SqueezeNet v1.1 as the Caffe model "SqueezeNet_v1.1" defines it (../shared/models/squeezenet1_1).

Module paths are the Caffe layer paths (``fire2.squeeze1x1`` is
``fire2/squeeze1x1``), so each parameter file is found by its module's name.
The network ends in conv10, its ReLU and a global average pool: that pooled
value is the logits layer (``pool10``, Caffe's name for it).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: (squeeze, expand) widths of fire2..fire9.
FIRES = ((16, 64), (16, 64), (32, 128), (32, 128), (48, 192), (48, 192), (64, 256), (64, 256))
#: Max pools 3/2 (ceil_mode, as Caffe rounds) come after conv1, fire3 and fire5.
POOLED_AFTER = frozenset({"conv1", "fire3", "fire5"})


class Fire(nn.Module):
    def __init__(self, inputs: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze1x1 = nn.Conv2d(inputs, squeeze, 1)
        self.expand1x1 = nn.Conv2d(squeeze, expand, 1)
        self.expand3x3 = nn.Conv2d(squeeze, expand, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.squeeze1x1(x))
        return torch.cat([torch.relu(self.expand1x1(x)), torch.relu(self.expand3x3(x))], 1)


class SqueezeNet(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, stride=2)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        inputs = 64
        for number, (squeeze, expand) in enumerate(FIRES, start=2):
            self.add_module(f"fire{number}", Fire(inputs, squeeze, expand))
            if f"fire{number}" in POOLED_AFTER:
                self.add_module(f"pool{number}", nn.MaxPool2d(3, 2, ceil_mode=True))
            inputs = 2 * expand
        self.drop9 = nn.Dropout(0.5)
        self.conv10 = nn.Conv2d(inputs, classes, 1)
        self.pool10 = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool1(torch.relu(self.conv1(x)))
        for number in range(2, 10):
            x = getattr(self, f"fire{number}")(x)
            if f"fire{number}" in POOLED_AFTER:
                x = getattr(self, f"pool{number}")(x)
        x = self.pool10(torch.relu(self.conv10(self.drop9(x))))
        return torch.flatten(x, 1)
