"""torchvision's ImageNet models that OpenAI Microscope showed, named as Microscope named them.

Each entry builds the torchvision module and names its layers; the weights
come through torchvision's weights API: its pinned URL, downloaded once into
torch's hub cache with torch's own hash check (the hash prefix in the file
name), or a local state dict given with ``--weights``. A mirror of
download.pytorch.org can stand in (``MICROSCOPE_WEIGHTS_MIRROR``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import nn

from app.errors import WeightsError
from precompute.models.traced import Description

#: Where torchvision's weight URLs point; a mirror replaces this prefix.
OFFICIAL = "https://download.pytorch.org/models/"


def _googlenet_names() -> dict[str, str]:
    names = {"conv1.conv": "conv2d0", "conv2.conv": "conv2d1", "conv3.conv": "conv2d2", "fc": "softmax2"}
    branches = {"branch1.conv": "1x1", "branch2.0.conv": "3x3_bottleneck", "branch2.1.conv": "3x3",
                "branch3.0.conv": "5x5_bottleneck", "branch3.1.conv": "5x5", "branch4.1.conv": "pool_reduce"}
    for block in ("3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"):
        names[f"inception{block}"] = f"mixed{block}"
        names.update({f"inception{block}.{path}": f"mixed{block}_{suffix}" for path, suffix in branches.items()})
    return names


def _vgg19_names() -> dict[str, str]:
    names, index = {}, 0
    for stage, convs in enumerate((2, 2, 4, 4, 4), start=1):
        for number in range(1, convs + 1):
            names[f"features.{index}"] = f"conv{stage}_{number}"
            index += 2  # conv, relu
        index += 1  # the stage's max pool
    names.update({"classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": "fc8"})
    return names


ALEXNET_NAMES = {"features.0": "conv1", "features.3": "conv2", "features.6": "conv3", "features.8": "conv4",
                 "features.10": "conv5", "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8"}


@dataclass(frozen=True)
class ZooModel:
    name: str
    #: torchvision's builder and weights enum member.
    builder: str
    weights: str
    title: str
    description: str
    names: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    def build(self) -> nn.Module:
        """The module, unweighted (its parameters are loaded next)."""
        return getattr(torchvision.models, self.builder)(weights=None, **self.options)

    def describe(self) -> Description:
        return Description(name=self.name, title=self.title, description=self.description, names=self.names)

    @property
    def url(self) -> str:
        return torchvision.models.get_weight(self.weights).url


ZOO: dict[str, ZooModel] = {
    entry.name: entry
    for entry in (
        ZooModel(
            "googlenet", "googlenet", "GoogLeNet_Weights.IMAGENET1K_V1", "GoogLeNet (torchvision)",
            "torchvision's InceptionV1 with BatchNorm, trained in PyTorch; its '5x5' branches use 3x3 kernels "
            "(as torchvision's copy does). Layer names as Microscope's InceptionV1.",
            names=_googlenet_names(), options={"aux_logits": False, "transform_input": True, "init_weights": False},
        ),
        ZooModel("resnet50", "resnet50", "ResNet50_Weights.IMAGENET1K_V1", "ResNet-50 (torchvision)",
                 "He et al. 2015, torchvision's v1.5 (stride in the 3x3 conv); each block's sum is a layer, "
                 "its convolutions are branches."),
        ZooModel("vgg19", "vgg19", "VGG19_Weights.IMAGENET1K_V1", "VGG-19 (torchvision)",
                 "Simonyan and Zisserman 2014, torchvision's weights; layer names as Microscope's VGG-19.",
                 names=_vgg19_names()),
        ZooModel("alexnet", "alexnet", "AlexNet_Weights.IMAGENET1K_V1", "AlexNet (torchvision)",
                 "Krizhevsky et al. 2012, torchvision's one-tower variant; layer names as Microscope's AlexNet.",
                 names=ALEXNET_NAMES),
    )
}


def mirrored(url: str) -> str:
    mirror = os.environ.get("MICROSCOPE_WEIGHTS_MIRROR")
    return mirror.rstrip("/") + "/" + url.removeprefix(OFFICIAL) if mirror and url.startswith(OFFICIAL) else url


def fetch(url: str, cache: Path | None = None) -> Path:
    """A checked local copy of ``url`` (torchvision's naming: ``name-<sha256 prefix>.pth``), downloaded once."""
    folder = cache or Path(torch.hub.get_dir()) / "checkpoints"
    name = url.rsplit("/", 1)[-1]
    match = torch.hub.HASH_REGEX.search(name)
    if match is None:
        raise WeightsError(f"{url}: the file name carries no hash prefix to check it against")
    target = folder / name
    if target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), hash_prefix=match.group(1), progress=False)
    except RuntimeError as error:  # torch's hash mismatch
        raise WeightsError(f"{url}: {error}") from error
    except OSError as error:
        raise WeightsError(f"could not download {url}: {error}") from error
    return target


def official_prefix(entry: ZooModel) -> str:
    """The sha256 prefix torchvision's file name carries (what `fetch` checks a download against)."""
    match = torch.hub.HASH_REGEX.search(entry.url.rsplit("/", 1)[-1])
    return match.group(1) if match else ""
