"""InceptionV1 (GoogLeNet), the BVLC Caffe training (``inceptionv1_caffe``), declared as data.

The architecture and preprocessing follow ../shared/models/bvlc_googlenet
(Szegedy et al. 2014). Layer names are the ones people cite from OpenAI
Microscope and the Circuits thread (``conv2d0`` ... ``mixed5b``,
``softmax2``); every branch of every inception block is a layer of its own.
Geometry (sizes, strides, receptive fields) is derived from the kernels here
rather than typed in, and a test checks it against the built network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from importlib import resources

from app.core.zoo.registry import entry
from app.core.zoo.spec import ClassLabel, LayerSpec, ModelSpec, Pool, WeightsSource


#: (block, 1x1, 3x3 bottleneck, 3x3, 5x5 bottleneck, 5x5, pool projection)
BLOCKS: tuple[tuple[str, int, int, int, int, int, int], ...] = (
    ("mixed3a", 64, 96, 128, 16, 32, 32),
    ("mixed3b", 128, 128, 192, 32, 96, 64),
    ("mixed4a", 192, 96, 208, 16, 48, 64),
    ("mixed4b", 160, 112, 224, 24, 64, 64),
    ("mixed4c", 128, 128, 256, 24, 64, 64),
    ("mixed4d", 112, 144, 288, 32, 64, 64),
    ("mixed4e", 256, 160, 320, 32, 128, 128),
    ("mixed5a", 256, 160, 320, 32, 128, 128),
    ("mixed5b", 384, 192, 384, 48, 128, 128),
)

#: Blocks preceded by a 3/2 max pool (Caffe's pool3 and pool4).
POOLED_BLOCKS = frozenset({"mixed4a", "mixed5a"})

#: Caffe's 3x3 stride-2 max pool (pool1..pool4), and the pool branch's 3x3 stride-1 pool.
DOWNSAMPLE = Pool(3, 2)
POOL_BRANCH = Pool(3, 1, 1)

#: Branch suffix -> Caffe parameter name inside ``inception_XX/``.
BRANCH_WEIGHTS = {
    "1x1": "1x1",
    "3x3_bottleneck": "3x3_reduce",
    "3x3": "3x3",
    "5x5_bottleneck": "5x5_reduce",
    "5x5": "5x5",
    "pool_reduce": "pool_proj",
}


@dataclass(frozen=True)
class _Grid:
    """Geometry of an activation map, in input pixels."""

    size: int
    stride: int
    receptive_field: int
    offset: int

    def conv(self, kernel: int, stride: int = 1, padding: int | None = None) -> _Grid:
        padding = kernel // 2 if padding is None else padding
        return _Grid(
            size=(self.size + 2 * padding - kernel) // stride + 1,
            stride=self.stride * stride,
            receptive_field=self.receptive_field + (kernel - 1) * self.stride,
            offset=self.offset + (kernel // 2 - padding) * self.stride,
        )

    def max_pool(self, kernel: int = 3, stride: int = 2) -> _Grid:
        """Caffe's pooling rounds the output size up (``ceil_mode=True``)."""
        pooled = self.conv(kernel, stride, padding=0)
        return replace(pooled, size=math.ceil((self.size - kernel) / stride) + 1)


def _layer(name: str, channels: int, kind: str, grid: _Grid, inputs: tuple[str, ...], **extra: object) -> LayerSpec:
    return LayerSpec(
        name=name,
        channels=channels,
        kind=kind,  # type: ignore[arg-type]
        size=grid.size,
        stride=grid.stride,
        receptive_field=grid.receptive_field,
        offset=grid.offset,
        inputs=inputs,
        **extra,  # type: ignore[arg-type]
    )


def _layers(input_size: int) -> tuple[LayerSpec, ...]:
    image = _Grid(size=input_size, stride=1, receptive_field=1, offset=0)
    conv2d0 = image.conv(7, stride=2, padding=3)
    conv2d1 = conv2d0.max_pool().conv(1)
    conv2d2 = conv2d1.conv(3)
    layers = [
        _layer("conv2d0", 64, "conv", conv2d0, (), kernel=7, weights="conv1/7x7_s2"),
        _layer("conv2d1", 64, "conv", conv2d1, ("conv2d0",), previous="conv2d0", kernel=1, weights="conv2/3x3_reduce",
               pools=(DOWNSAMPLE,)),
        _layer("conv2d2", 192, "conv", conv2d2, ("conv2d1",), previous="conv2d1", kernel=3, weights="conv2/3x3"),
    ]
    grid, previous = conv2d2, "conv2d2"
    for block, c1, c3r, c3, c5r, c5, cp in BLOCKS:
        # The stem's pool2 precedes mixed3a; pool3 and pool4 precede mixed4a and mixed5a.
        pooled = block == "mixed3a" or block in POOLED_BLOCKS
        entry = (DOWNSAMPLE,) if pooled else ()
        grid = grid.max_pool() if pooled else grid
        caffe = f"inception_{block[-2:]}"
        branches = (
            ("1x1", c1, grid.conv(1), 1, previous, entry),
            ("3x3_bottleneck", c3r, grid.conv(1), 1, previous, entry),
            ("3x3", c3, grid.conv(3), 3, f"{block}_3x3_bottleneck", ()),
            ("5x5_bottleneck", c5r, grid.conv(1), 1, previous, entry),
            ("5x5", c5, grid.conv(5), 5, f"{block}_5x5_bottleneck", ()),
            ("pool_reduce", cp, grid.conv(3, padding=1).conv(1), 1, previous, (*entry, POOL_BRANCH)),
        )
        for suffix, channels, branch_grid, kernel, source, pools in branches:
            layers.append(
                _layer(
                    f"{block}_{suffix}", channels, "branch", branch_grid, (source,),
                    kernel=kernel, weights=f"{caffe}/{BRANCH_WEIGHTS[suffix]}", block=block, pools=pools,
                )
            )
        widest = max((branch[2] for branch in branches), key=lambda g: g.receptive_field)
        outputs = tuple(f"{block}_{suffix}" for suffix in ("1x1", "3x3", "5x5", "pool_reduce"))
        layers.append(_layer(block, c1 + c3 + c5 + cp, "mixed", widest, outputs, previous=previous, block=block))
        grid, previous = widest, block
    logits = _Grid(size=1, stride=input_size, receptive_field=input_size, offset=input_size // 2)
    layers.append(
        _layer("softmax2", 1000, "logits", logits, (previous,), previous=previous, kernel=1, weights="loss3/classifier")
    )
    return tuple(layers)


def imagenet_classes() -> tuple[ClassLabel, ...]:
    text = resources.files("app.core.zoo").joinpath("imagenet_classes.tsv").read_text(encoding="utf-8")
    rows = (line.split("\t") for line in text.splitlines() if line)
    return tuple(ClassLabel(index, synset, name) for index, (synset, name) in enumerate(rows))


def inception5h_classes() -> tuple[ClassLabel, ...]:
    """The 1,008 outputs of TensorFlow's inception5h graph: 0 'dummy', 1..1000 its labels, 1001..1007 unused.

    The graph's labels are names without synsets, in an order of their own; a name that is one
    ImageNet class's first name (all but a few repeated ones) gets that class's synset.
    """
    text = resources.files("app.core.zoo").joinpath("inception5h_labels.txt").read_text(encoding="utf-8")
    names = [line.strip() for line in text.splitlines() if line.strip()]
    first = {}
    for label in imagenet_classes():
        first.setdefault(label.name.split(",")[0].strip(), []).append(label.synset)
    labels = []
    for index in range(1008):
        name = names[index] if index < len(names) else f"unused {index}"
        synsets = first.get(name, [])
        labels.append(ClassLabel(index, synsets[0] if len(synsets) == 1 else "", name))
    return tuple(labels)


def inceptionv1_caffe() -> ModelSpec:
    download = entry("inceptionv1_caffe").download  # the registry pins where its files come from
    return ModelSpec(
        name="inceptionv1_caffe",
        title=entry("inceptionv1_caffe").title,
        input_size=224,
        channel_order="BGR",
        value_range=(0.0, 255.0),
        mean=(104.0, 117.0, 123.0),
        layers=_layers(224),
        classes=imagenet_classes(),
        weights=WeightsSource(base_url=download.base_url, folder=download.shared, checksums=download.checksums),
        description=entry("inceptionv1_caffe").description,
    )
