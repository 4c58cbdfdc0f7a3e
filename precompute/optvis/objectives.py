"""Objectives: small composable objects scoring each image of a batch.

An objective maps the activations of one forward pass (pre-ReLU, by layer
name) to one value per batch element, to be maximized. They compose with
``+``, ``-`` and scalar ``*``::

    channel("mixed4a", 97) - 100 * diversity("mixed4a")

Unit-indexed objectives take one unit for the whole batch or one per batch
element (``channel("mixed4c", [0, 1, 2, ...])``), which is how one batch
renders many units of a layer at once.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

Activations = dict[str, Tensor]


@dataclass(frozen=True)
class Objective:
    score: Callable[[Activations], Tensor]
    layers: frozenset[str]
    name: str

    def __call__(self, activations: Activations) -> Tensor:
        return self.score(activations)

    def __add__(self, other: Objective) -> Objective:
        return Objective(lambda a: self(a) + other(a), self.layers | other.layers, f"{self.name} + {other.name}")

    def __sub__(self, other: Objective) -> Objective:
        return self + (-1.0) * other

    def __neg__(self) -> Objective:
        return (-1.0) * self

    def __mul__(self, factor: float) -> Objective:
        return Objective(lambda a: factor * self(a), self.layers, f"{factor:g} * ({self.name})")

    __rmul__ = __mul__


def _units(units: int | Sequence[int], activation: Tensor) -> Tensor:
    index = torch.as_tensor(units, device=activation.device).reshape(-1)
    return index.expand(activation.shape[0]) if index.numel() == 1 else index


def _per_image(activation: Tensor, units: int | Sequence[int]) -> Tensor:
    """(B, ...) the selected channel of each batch element."""
    index = _units(units, activation)
    return activation[torch.arange(activation.shape[0], device=activation.device), index]


def channel(layer: str, units: int | Sequence[int]) -> Objective:
    """Mean activation of a channel over all positions (a class logit for ``softmax2``)."""

    def score(activations: Activations) -> Tensor:
        selected = _per_image(activations[layer], units)
        return selected.flatten(1).mean(dim=1) if selected.dim() > 1 else selected

    return Objective(score, frozenset({layer}), f"channel({layer}, {units})")


def neuron(layer: str, units: int | Sequence[int]) -> Objective:
    """Activation of a channel at the centre position only."""

    def score(activations: Activations) -> Tensor:
        selected = _per_image(activations[layer], units)
        if selected.dim() == 1:
            return selected
        height, width = selected.shape[-2:]
        return selected[:, height // 2, width // 2]

    return Objective(score, frozenset({layer}), f"neuron({layer}, {units})")


def deepdream(layer: str) -> Objective:
    """Mean squared activation of a whole layer (Mordvintsev et al.'s DeepDream)."""
    return Objective(lambda a: a[layer].pow(2).flatten(1).mean(dim=1), frozenset({layer}), f"deepdream({layer})")


def diversity(layer: str, group: int | None = None) -> Objective:
    """Penalty on the style similarity of images in a group (the article's diversity term).

    The mean cosine similarity of each image's Gram matrix (of the layer's
    output after ReLU, as in Lucid) to the others' in its group of ``group``
    consecutive batch elements (the whole batch if None); subtract it,
    scaled, from the main objective.
    """

    def score(activations: Activations) -> Tensor:
        activation = activations[layer].relu()
        batch, channels = activation.shape[:2]
        size = group or batch
        flat = activation.reshape(batch, channels, -1)
        gram = torch.nn.functional.normalize(torch.bmm(flat, flat.transpose(1, 2)).reshape(batch, -1), dim=1)
        gram = gram.reshape(batch // size, size, -1)
        similarity = torch.bmm(gram, gram.transpose(1, 2))
        others = (similarity.sum(dim=2) - similarity.diagonal(dim1=1, dim2=2)) / max(size - 1, 1)
        return others.reshape(batch)

    return Objective(score, frozenset({layer}), f"diversity({layer})")
