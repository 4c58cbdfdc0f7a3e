"""Running per-unit statistics over a stream of images, kept on the device.

For every unit of every selected layer, one forward pass updates: the top-k
images by the unit's maximum activation over positions (with that position),
the bottom-k by its most negative pre-ReLU activation (the article's negative
examples), a coarse histogram of the per-image maximum and its mean. Nothing per image is kept beyond a batch, so memory does not grow
with the dataset.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from app.core.zoo import LayerSpec, ModelSpec

#: Histogram bins, evenly spaced in asinh(activation): fine near zero, coarse
#: for the large values of deep layers, the same for every layer and run.
HISTOGRAM_EDGES: tuple[float, ...] = tuple(round(math.sinh(x / 4), 4) for x in range(-32, 33))


@dataclass
class Ranking:
    """The k best (largest ``values``) images per unit; ``images`` is -1 where a slot is empty."""

    values: Tensor  # (C, k) float32, sorted descending
    images: Tensor  # (C, k) int64
    positions: Tensor  # (C, k) int64, y * width + x

    @classmethod
    def empty(cls, channels: int, k: int, device: torch.device) -> Ranking:
        return cls(
            values=torch.full((channels, k), -math.inf, device=device),
            images=torch.full((channels, k), -1, dtype=torch.long, device=device),
            positions=torch.zeros((channels, k), dtype=torch.long, device=device),
        )

    def update(self, values: Tensor, positions: Tensor, images: Tensor) -> None:
        """Merge a batch: ``values`` and ``positions`` (B, C); ``images`` (B,) or per channel (B, C).

        Equal values rank the lower image first, so the result is one and the same whatever the order
        in which images, batches or shards arrive (ties are common: a dead unit's logit is its bias).
        """
        channels, k = self.values.shape
        images = torch.cat([self.images, images.T if images.dim() == 2 else images.expand(channels, -1)], dim=1)
        values = torch.cat([self.values, values.T], dim=1)
        best = _ranking_keys(values, images).topk(k, dim=1, sorted=True).indices
        self.values, self.images = values.gather(1, best), images.gather(1, best)
        self.positions = torch.cat([self.positions, positions.T], dim=1).gather(1, best)


def _ranking_keys(values: Tensor, images: Tensor) -> Tensor:
    """int64 keys that order as (value, then the lower image): distinct for distinct images, so top-k of
    them has no ties. A float32's bits, read as int32 with the negatives' magnitude bits flipped, order
    as the floats do; the image's complement fills the low 32 bits."""
    bits = values.float().contiguous().view(torch.int32)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits).long()
    return (ordered << 32) + (0x7FFFFFFF - images)


@dataclass
class LayerStatistics:
    top: Ranking
    #: Ranked by the negated minimum: the most negative activations first.
    bottom: Ranking
    histogram: Tensor  # (C, bins) int64 counts of the per-image maximum
    max_sum: Tensor  # (C,) float64, sum over images of the maximum over positions
    active: Tensor  # (C,) int64, images where the maximum is above zero

    @classmethod
    def empty(cls, channels: int, k: int, bins: int, device: torch.device) -> LayerStatistics:
        return cls(
            top=Ranking.empty(channels, k, device),
            bottom=Ranking.empty(channels, k, device),
            histogram=torch.zeros((channels, bins), dtype=torch.long, device=device),
            max_sum=torch.zeros(channels, dtype=torch.float64, device=device),
            active=torch.zeros(channels, dtype=torch.long, device=device),
        )

    @classmethod
    def concatenate(cls, parts: list[LayerStatistics]) -> LayerStatistics:
        """A block output's statistics are its branches' statistics, unit after unit."""

        def rank(side: str) -> Ranking:
            rankings = [getattr(part, side) for part in parts]
            return Ranking(*(torch.cat([getattr(r, f) for r in rankings]) for f in ("values", "images", "positions")))

        return cls(
            top=rank("top"), bottom=rank("bottom"),
            histogram=torch.cat([part.histogram for part in parts]),
            max_sum=torch.cat([part.max_sum for part in parts]),
            active=torch.cat([part.active for part in parts]),
        )

    def fields(self) -> dict[str, Tensor]:
        return {
            **{f"{side}.{f}": getattr(getattr(self, side), f) for side in ("top", "bottom") for f in ("values", "images", "positions")},
            "histogram": self.histogram, "max_sum": self.max_sum, "active": self.active,
        }

    @classmethod
    def from_fields(cls, saved: dict[str, Tensor], device: torch.device) -> LayerStatistics:
        def rank(side: str) -> Ranking:
            return Ranking(*(saved[f"{side}.{f}"].to(device) for f in ("values", "images", "positions")))

        return cls(top=rank("top"), bottom=rank("bottom"), histogram=saved["histogram"].to(device),
                   max_sum=saved["max_sum"].to(device), active=saved["active"].to(device))


def _extremes(pre: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per image and channel (B, C): the max over positions and where it is, the min and where.

    Adaptive max pooling with indices is the fast reduction here: on a
    channels-last CPU tensor it costs about what a plain ``amax`` does, where
    ``max(dim)`` with indices is an order of magnitude slower.
    """
    if pre.dim() == 2:  # logits: a single position
        zeros = torch.zeros_like(pre, dtype=torch.long)
        return pre.float(), zeros, pre.float(), zeros
    high, high_at = F.adaptive_max_pool2d(pre, 1, return_indices=True)
    negated_low, low_at = F.adaptive_max_pool2d(-pre, 1, return_indices=True)
    return high.flatten(1).float(), high_at.flatten(1), -negated_low.flatten(1).float(), low_at.flatten(1)


class RunningStatistics:
    """Statistics of the selected layers, updated batch by batch from pre-ReLU activations.

    A block output's units are its branches' units, concatenated: only the
    branches are reduced, and the block's statistics are assembled from them.
    """

    def __init__(self, spec: ModelSpec, layers: Iterable[LayerSpec], k: int, device: torch.device) -> None:
        self.spec = spec
        self.layers = list(layers)
        self.k = k
        self.device = device
        self.edges = torch.asinh(torch.tensor(HISTOGRAM_EDGES[1:-1], device=device))
        self.reduced: dict[str, LayerStatistics] = {}
        for layer in self.layers:
            for name, channels in self._sources(layer):
                self.reduced.setdefault(name, LayerStatistics.empty(channels, k, len(HISTOGRAM_EDGES) - 1, device))
        self.images_seen = 0

    def _sources(self, layer: LayerSpec) -> list[tuple[str, int]]:
        if layer.kind != "mixed":
            return [(layer.name, layer.channels)]
        return [(name, self.spec.layer(name).channels) for name in layer.inputs]

    def needed_activations(self) -> set[str]:
        """Activations to ask the network for."""
        return set(self.reduced)

    def statistics(self, layer: LayerSpec) -> LayerStatistics:
        if layer.kind != "mixed":
            return self.reduced[layer.name]
        return LayerStatistics.concatenate([self.reduced[name] for name in layer.inputs])

    def observe(self, net: Callable[..., object], batch: Tensor, images: Tensor) -> None:
        """Run ``net`` on ``batch`` and fold each activation in as it is computed (none is kept)."""
        images = images.to(self.device)
        net(batch, self.needed_activations(), sink=lambda name, pre: self.add(name, pre, images))
        self.images_seen += int(images.numel())

    def add(self, name: str, pre: Tensor, images: Tensor) -> None:
        """Fold one layer's activations of a batch into its statistics."""
        stats = self.reduced[name]
        high, high_at, low, low_at = _extremes(pre)
        stats.top.update(high, high_at, images)
        stats.bottom.update(-low, low_at, images)
        bins = torch.bucketize(torch.asinh(high), self.edges)
        stats.histogram.scatter_add_(1, bins.T, torch.ones_like(bins.T))
        stats.max_sum += high.double().sum(dim=0)
        stats.active += (high > 0).sum(dim=0)

    def merge(self, other: RunningStatistics) -> None:
        """Fold in the statistics of a disjoint set of images (another shard's)."""
        for name, stats in self.reduced.items():
            theirs = other.reduced[name]
            for side in ("top", "bottom"):
                mine, their = getattr(stats, side), getattr(theirs, side)
                mine.update(their.values.T, their.positions.T, their.images.T)
            stats.histogram += theirs.histogram
            stats.max_sum += theirs.max_sum
            stats.active += theirs.active
        self.images_seen += other.images_seen

    def state_dict(self) -> dict[str, object]:
        return {"images_seen": self.images_seen, "layers": {name: s.fields() for name, s in self.reduced.items()}}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.images_seen = int(state["images_seen"])  # type: ignore[arg-type]
        for name, saved in state["layers"].items():  # type: ignore[attr-defined]
            self.reduced[name] = LayerStatistics.from_fields(saved, self.device)
