"""Networks a researcher brings from their own training runs (issue 31), for the tests of "your own model".

- ``mnist``: the plain `nn.Sequential` an MNIST course writes, 1 channel at 32 px, ``Flatten`` then ``Linear``
  on a spatial map (no global pool), 10 classes;
- ``cifar``: the same with 3 channels;
- ``modern``: GELU, SiLU and Hardswish activations, GroupNorm and LayerNorm over channels, a depthwise and a
  grouped convolution, a residual add, a global pool, 5 classes;
- ``backbone``: convolutions whose output is a feature map (no classifier).

Each factory takes no argument (``--model tests.support.own_models:mnist``); `write_checkpoint` saves seeded weights in
any of the formats `--weights` reads.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn


def mnist(channels: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 8 * 8, 10),
    )


def cifar() -> nn.Sequential:
    return mnist(3)


class ChannelsLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map, as ConvNeXt applies it."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Modern(nn.Module):
    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.GroupNorm(2, 8), nn.GELU())
        self.depthwise = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), ChannelsLayerNorm(8), nn.SiLU())
        self.grouped = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=2), nn.BatchNorm2d(8), nn.Hardswish())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        x = x + self.grouped(self.depthwise(x))
        return self.head(x)


def modern() -> Modern:
    return Modern()


def backbone() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 12, 3, 2, 1), nn.ReLU(),
                         nn.Conv2d(12, 16, 3, 1, 1))


def write_checkpoint(module: nn.Module, path: Path, seed: int = 0) -> Path:
    """``module`` with seeded weights saved at ``path`` in the format its suffix names: ``.pt``/``.pth`` (a state
    dict), ``.safetensors``, ``.jit`` (TorchScript, `torch.jit.trace`), ``.pickle`` (the whole module pickled)."""
    torch.manual_seed(seed)
    for parameter in module.parameters():
        with torch.no_grad():
            parameter.copy_(torch.randn_like(parameter) * 0.3)
    module.eval()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({key: value.contiguous() for key, value in module.state_dict().items()}, str(path))
    elif path.suffix == ".jit":
        channels = next(m for m in module.modules() if isinstance(m, nn.Conv2d)).in_channels
        torch.jit.trace(module, torch.zeros(1, channels, 32, 32)).save(str(path))
    elif path.suffix == ".pickle":
        torch.save(module, path)
    else:
        torch.save(module.state_dict(), path)
    return path


def multispectral(channels: int = 4) -> nn.Sequential:
    """A 4-channel network (say R, G, B and near infrared) at 32 px, 3 classes: it reads ``.npy`` and TIFF files."""
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(12, 3),
    )


def write_planes(folder: Path, channels: int = 4, per_class: int = 4, classes: tuple[str, ...] = ("field", "forest", "water"),
                 seed: int = 0) -> Path:
    """Seeded multispectral images in class folders (``folder/field/0.npy``...): height x width x channels floats,
    odd sizes, every other one a TIFF (tifffile) stored channel-first, as many instruments write them."""
    import numpy as np
    import tifffile

    generator = np.random.default_rng(seed)
    for number, name in enumerate(classes):
        (folder / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            height, width = 40 + 3 * index, 36 + 5 * number
            values = generator.random((height, width, channels), dtype=np.float32) * 0.5
            values[..., number % channels] += np.linspace(0, 0.5, width, dtype=np.float32)  # each class its own channel
            if index % 2:
                tifffile.imwrite(folder / name / f"{index}.tif", values.transpose(2, 0, 1), photometric="minisblack")
            else:
                np.save(folder / name / f"{index}.npy", values)
    return folder
