"""A tiny CNN with every structure the stages meet, for tests that must run in seconds.

A stem (convolution, BatchNorm, ReLU, max pool), one inception-style block
(branches concatenated, one behind a bottleneck, one behind a pool), two
residual blocks (one with a strided projection, one with the identity) and a
1,000-way classifier. It is also the README's worked example of bringing
your own model: ``microscope precompute all --model tests.support.tiny_model:tiny
--weights tiny.pt`` after ``python -m tests.support.tiny_model tiny.pt`` wrote seeded
weights.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import Tensor, nn

#: The module path ``--model`` takes.
FACTORY = "tests.support.tiny_model:tiny"


def _conv(inputs: int, outputs: int, kernel: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inputs, outputs, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(outputs))


class Mixed(nn.Module):
    def __init__(self, inputs: int) -> None:
        super().__init__()
        self.branch1 = _conv(inputs, 4, 1)
        self.branch2 = nn.Sequential(_conv(inputs, 4, 1), nn.ReLU(), _conv(4, 6, 3))
        self.branch3 = nn.Sequential(nn.MaxPool2d(3, 1, 1), _conv(inputs, 4, 1))
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.relu(self.branch1(x)), self.relu(self.branch2(x)), self.relu(self.branch3(x))], 1)


class Residual(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv(inputs, 8, 1)
        self.conv2 = _conv(8, 8, 3, stride)
        self.conv3 = _conv(8, outputs, 1)
        self.downsample = _conv(inputs, outputs, 1, stride) if stride > 1 or inputs != outputs else None
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        path = self.conv3(self.relu(self.conv2(self.relu(self.conv1(x)))))
        identity = self.downsample(x) if self.downsample is not None else x
        return self.relu(path + identity)


class Tiny(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 5, 2, 2, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.MaxPool2d(3, 2, 1))
        self.mixed = Mixed(8)
        self.res1 = Residual(14, 16, 2)
        self.res2 = Residual(16, 16, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.res2(self.res1(self.mixed(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def tiny() -> Tiny:
    return Tiny()


class Detectors(nn.Module):
    """One 15x15 convolution whose kernels tests write by hand (an edge, a line, a curve detector), then a
    classifier: the tuning tests' model (``tests.support.tiny_model:detectors``)."""

    def __init__(self, units: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.detect = nn.Conv2d(3, units, 15, 1, 7)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(units, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.detect(x))), 1))


def detectors() -> Detectors:
    return Detectors()


#: The two directions `TwoDirections`' ``mix`` layer is made of: non-negative unit vectors, 0.3 apart in cosine.
DIRECTIONS = (
    (0.6, 0.5, 0.4, 0.3, 0.3, 0.2, 0.1, 0.0),
    (0.0, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7),
)


class TwoDirections(nn.Module):
    """A layer built from two known directions (the factors tests' model, ``tests.support.tiny_model:two_directions``).

    ``maps`` makes two non-negative maps that never overlap (where the image is redder than green, and
    where it is greener than red); ``mix`` writes each into 8 units along its direction of `DIRECTIONS`,
    so every activation vector of ``mix`` is ``a1 * d1 + a2 * d2`` with at most one of a1, a2 non-zero.
    """

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        import math

        self.maps = nn.Conv2d(3, 2, 4, stride=4, bias=False)
        self.mix = nn.Conv2d(2, 8, 1, bias=False)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)
        with torch.no_grad():
            self.maps.weight.zero_()
            self.maps.weight[0, 0], self.maps.weight[0, 1] = 1 / 16, -1 / 16
            self.maps.weight[1, 0], self.maps.weight[1, 1] = -1 / 16, 1 / 16
            for i, direction in enumerate(DIRECTIONS):
                norm = math.sqrt(sum(v * v for v in direction))
                self.mix.weight[:, i, 0, 0] = torch.tensor([v / norm for v in direction])

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.mix(self.relu(self.maps(x))))), 1))


def two_directions() -> TwoDirections:
    return TwoDirections()


class Blocks(nn.Module):
    """Two convolutions, the second grouped in two: the weights between them are block-diagonal (the modules
    test's model, ``tests.support.tiny_model:blocks``)."""

    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 8, 3, padding=1)
        self.second = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.second(self.relu(self.first(x))))), 1))


def blocks() -> Blocks:
    return Blocks()


def synthetic_images(folder: Path, count: int, seed: int = 0) -> Path:
    """``count`` seeded JPEGs (smooth colour fields with stripes, of varied sizes and shapes) under ``folder``,
    in synset-like subfolders, so tests of the stages need no shared images."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for number in range(count):
        height, width = int(rng.integers(48, 160)), int(rng.integers(48, 160))
        y, x = np.mgrid[0:height, 0:width] / 32.0
        frequency, angle, phase = rng.uniform(0.5, 3.0), rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi, 3)
        stripes = np.sin(frequency * (x * np.cos(angle) + y * np.sin(angle))[..., None] + phase)
        pixels = 127.5 + 127.5 * stripes * rng.uniform(0.2, 1.0, 3)
        target = folder / f"n{number % 7:08d}" / f"synthetic_{number:04d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(target, quality=90)
    return folder


def write_weights(path: Path, seed: int = 0) -> str:
    """Seeded random weights as a state dict (torch.save) at ``path``; their sha256."""
    from precompute.models import seeded_state_dict
    from precompute.models.weight_files import file_sha256

    torch.save(seeded_state_dict(FACTORY, seed), path)
    return file_sha256(path)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "tiny.pt")
    print(f"{target}: seeded tiny weights, sha256 {write_weights(target)}")
