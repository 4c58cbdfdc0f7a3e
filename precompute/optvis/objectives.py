"""Objectives: small composable objects scoring each image of a batch.

An objective maps the activations of one forward pass (pre-ReLU, by layer
name) to one value per batch element, to be maximized. ``channel`` and
``neuron`` score a unit's output after its ReLU, as Lucid's layer names
(``conv2d0``, ``mixed4a``) and OpenAI Microscope do: on the pre-ReLU value a
unit of ``conv2d0`` is linear in the image, so its spatial mean is maximized
by a flat colour, where the ReLU's output is maximized by the unit's pattern
tiled (Gabor textures). Units that start switched off still get a gradient
through Lucid's redirected ReLU. Logits have no ReLU and are scored as they
are. They compose with
``+``, ``-`` and scalar ``*``::

    channel("mixed4a", 97) - 100 * diversity("mixed4a")

Unit-indexed objectives take one unit for the whole batch or one per batch
element (``channel("mixed4c", [0, 1, 2, ...])``), which is how one batch
renders many units of a layer at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor, nn

Activations = dict[str, Tensor]


@dataclass(frozen=True)
class Objective:
    score: Callable[[Activations], Tensor]
    layers: frozenset[str]
    name: str
    #: Consecutive batch elements optimized together: Lucid's objective for a group is the
    #: mean of its members' scores (its ``channel`` is a mean over the batch too).
    group: int = 1

    def __call__(self, activations: Activations) -> Tensor:
        return self.score(activations)

    def total(self, activations: Activations) -> Tensor:
        """The quantity to maximize for the whole batch: the sum over groups of each group's mean score."""
        return self(activations).float().sum() / self.group

    def __add__(self, other: Objective) -> Objective:
        return Objective(lambda a: self(a) + other(a), self.layers | other.layers, f"{self.name} + {other.name}",
                         max(self.group, other.group))

    def __sub__(self, other: Objective) -> Objective:
        return self + (-1.0) * other

    def __neg__(self) -> Objective:
        return (-1.0) * self

    def __mul__(self, factor: float) -> Objective:
        return Objective(lambda a: factor * self(a), self.layers, f"{factor:g} * ({self.name})", self.group)

    __rmul__ = __mul__


class _RedirectedReLU(torch.autograd.Function):
    """ReLU whose gradient, for an image where no position lets any through, passes where it would raise the input.

    Lucid's ``redirected_relu_grad`` (lucid/misc/redirected_relu_grad.py),
    per batch element: without it a unit that is off everywhere on the
    initial image never receives a gradient. Lucid applies it to every ReLU of
    the graph for the first steps only (`redirecting`).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001
        (x,) = ctx.saved_tensors
        negative = x < 0
        relu_grad = grad.masked_fill(negative, 0)
        # ``grad`` is that of the loss being minimized (render backpropagates -objective), as in
        # Lucid: a descent step lowers y where grad > 0, which an input already below zero must not get.
        redirected = grad.masked_fill(negative & (grad > 0), 0)
        blocked = relu_grad.reshape(x.shape[0], -1).abs().amax(dim=1) == 0
        return torch.where(blocked.view(-1, *([1] * (x.dim() - 1))), redirected, relu_grad)


#: Lucid redirects a ReLU's gradient only while the optimizer's global step is at most 16 (``redirected_relu_grad``
#: returns the plain ReLU gradient once ``global_step > 16``; the step counts the updates made before this one): the
#: first 17 steps of a render.
REDIRECT_STEPS = 17
#: Whether this step redirects (set per step by `redirecting`; outside a render loop the gradient is redirected).
_redirecting: ContextVar[bool] = ContextVar("redirecting", default=True)


def redirected_relu(x: Tensor) -> Tensor:
    """The objective's ReLU: Lucid's redirected gradient during the first `REDIRECT_STEPS` steps, the plain one after."""
    return _RedirectedReLU.apply(x) if _redirecting.get() else x.clamp(min=0)


@contextmanager
def redirecting(net: nn.Module, step: int) -> Iterator[None]:
    """One optimization step as Lucid's ``gradient_override_map({"Relu": redirected_relu_grad})`` makes it: while
    ``step`` is below `REDIRECT_STEPS`, every ReLU of the network (each ``nn.ReLU`` module: hand-written networks and
    traced ones call modules, see `precompute.models.traced.TracedNetwork.functional_relus`) and the objective's
    own ReLU pass the redirected gradient; after that, none does. The hooks remove themselves."""
    on = step < REDIRECT_STEPS
    token = _redirecting.set(on)
    handles, inplace = [], []
    try:
        if on:
            for module in net.modules():
                if isinstance(module, nn.ReLU):
                    inplace.append((module, module.inplace))
                    module.inplace = False  # the hook must see the input's negative values
                    handles.append(module.register_forward_hook(_redirect_output))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module, was in inplace:
            module.inplace = was
        _redirecting.reset(token)


def _redirect_output(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
    return _RedirectedReLU.apply(inputs[0])


def _units(units: int | Sequence[int], activation: Tensor) -> Tensor:
    index = torch.as_tensor(units, device=activation.device).reshape(-1)
    return index.expand(activation.shape[0]) if index.numel() == 1 else index


def _per_image(activation: Tensor, units: int | Sequence[int]) -> Tensor:
    """(B, ...) the selected channel of each batch element."""
    index = _units(units, activation)
    return activation[torch.arange(activation.shape[0], device=activation.device), index]


def channel(layer: str, units: int | Sequence[int], relu: bool = True) -> Objective:
    """Mean of a channel's output over all positions (after its ReLU unless ``relu`` is False; a logit as is)."""

    def score(activations: Activations) -> Tensor:
        selected = _per_image(activations[layer], units)
        if selected.dim() == 1:  # logits: one position, no ReLU
            return selected
        return (redirected_relu(selected) if relu else selected).flatten(1).mean(dim=1)

    kind = "" if relu else "pre-ReLU "
    return Objective(score, frozenset({layer}), f"{kind}channel({layer}, {units})")


def neuron(layer: str, units: int | Sequence[int]) -> Objective:
    """A channel's output (after its ReLU) at the centre position only."""

    def score(activations: Activations) -> Tensor:
        selected = _per_image(activations[layer], units)
        if selected.dim() == 1:
            return selected
        height, width = selected.shape[-2:]
        return redirected_relu(selected[:, height // 2, width // 2])

    return Objective(score, frozenset({layer}), f"neuron({layer}, {units})")


def direction(layer: str, vectors: Tensor, neuron: bool = False, relu: bool = True) -> Objective:
    """Lucid's ``direction``: the dot product of a layer's output (after its ReLU) with a direction, averaged
    over positions (``neuron``: at the centre only, Lucid's ``direction_neuron``); one direction per batch
    element, rows of ``vectors`` (B, C) or one row for the whole batch (issue 22: NMF groups and dictionary
    features render through their base layer)."""

    def score(activations: Activations) -> Tensor:
        activation = activations[layer]
        output = redirected_relu(activation) if relu else activation
        along = torch.einsum("bchw,bc->bhw", output.float(), vectors.to(output.device).float().expand(len(output), -1))
        if neuron:
            height, width = along.shape[-2:]
            return along[:, height // 2, width // 2]
        return along.flatten(1).mean(dim=1)

    kind = "neuron" if neuron else ""
    return Objective(score, frozenset({layer}), f"direction{kind}({layer}, {len(vectors)} directions)")


def deepdream(layer: str) -> Objective:
    """Mean squared activation of a whole layer after its ReLU (Mordvintsev et al.'s DeepDream; Lucid's
    ``objectives.deepdream`` squares the layer's ReLU output), with Lucid's redirected gradient."""
    return Objective(lambda a: redirected_relu(a[layer]).pow(2).flatten(1).mean(dim=1), frozenset({layer}),
                     f"deepdream({layer})")


def diversity(layer: str, group: int) -> Objective:
    """Penalty on the style similarity of the images of a group (the article's diversity term).

    Lucid's ``diversity``: the Gram matrix of each image's activations (after
    ReLU), L2-normalized as a whole; the group's penalty is the sum over
    ordered pairs i != j of their dot products, divided by the group's size.
    Per image that is the sum of its similarities to the others, and the
    group's value is their mean (`Objective.total`); subtract it, scaled by
    100 as in Lucid's example, from the main objective.
    """

    def score(activations: Activations) -> Tensor:
        activation = activations[layer].float().relu()
        batch, channels = activation.shape[:2]
        flat = activation.reshape(batch, channels, -1)
        gram = torch.nn.functional.normalize(torch.bmm(flat, flat.transpose(1, 2)).reshape(batch, -1), dim=1, eps=1e-10)
        gram = gram.reshape(batch // group, group, -1)
        similarity = torch.bmm(gram, gram.transpose(1, 2))
        others = similarity.sum(dim=2) - similarity.diagonal(dim1=1, dim2=2)
        return others.reshape(batch)

    return Objective(score, frozenset({layer}), f"diversity({layer})", group)
