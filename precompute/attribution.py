"""Attribution: which pixels of an image drive a class or a unit, and whether the map is about the model (issue 23).

The methods are Captum's (PyTorch's attribution library): the vanilla gradient
(``Saliency``), integrated gradients (``IntegratedGradients``, from a black
image) and Grad-CAM (``LayerGradCam``) at a chosen layer. Grad-CAM needs the
layer as a module; every `Network` can splice an edit into a layer's output
(`Network.spliced`), so the layer's output goes through an identity module
there, which Captum hooks. Targets are a class (its logit) or a unit of a main
layer at one position (its pre-ReLU activation there; a probe's units at
their strongest position). Maps are per pixel at the input's resolution:
the absolute attribution summed over colour channels for the gradient and
integrated gradients (as Adebayo et al.'s sanity checks compare them),
Grad-CAM's ReLU'd map upsampled bilinearly.

`cascading_randomization` is Adebayo et al.'s model-randomization test:
the network's weights re-initialized from the top layer down, one weight
layer group at a time, and each method's map on the randomized network
compared with the real one's (Spearman rank correlation, SSIM).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from app.errors import MicroscopeError
from app.zoo import LayerSpec
from precompute.models.base import Network
from precompute.models.derived import base_network

METHODS = ("gradient", "integrated_gradients", "grad_cam")
#: Integrated gradients' path: steps of the Gauss-Legendre rule (Captum's default method), evaluated this many at once.
IG_STEPS = 20
IG_BATCH = 20
#: A method whose map correlates (median Spearman) below this with the real model's once every layer is randomized
#: "depends on the model"; at or above it, it "barely changes".
PASSES_BELOW = 0.5
#: Bumped when a stored map would change.
ATTRIBUTION_ALGORITHM = 1


@dataclass(frozen=True)
class Target:
    """What a map explains: a class's logit, or a unit's pre-ReLU activation at one position."""

    layer: str
    index: int
    y: int | None = None
    x: int | None = None

    def describe(self, logits: str) -> str:
        if self.layer == logits:
            return f"the logit of class {self.index}"
        return f"the pre-ReLU activation of {self.layer}:{self.index} at ({self.y}, {self.x})"


def spatial_layers(net: Network) -> list[LayerSpec]:
    """The main layers with a spatial map, in network order: where Grad-CAM can look."""
    return [layer for layer in base_network(net).spec.main_layers
            if layer.kind not in ("linear", "logits") and layer.size > 1 and not layer.is_derived]


def default_cam_layer(net: Network) -> LayerSpec:
    """Grad-CAM's layer by default: the last main layer with a spatial map (the paper's last convolution)."""
    spatial = spatial_layers(net)
    if not spatial:
        raise MicroscopeError(f"{net.spec.name} has no convolutional main layer for Grad-CAM")
    return spatial[-1]


def _scalar(net: Network, target: Target) -> Callable[[Tensor], Tensor]:
    """The target's value for each image of a batch of RGB images in [0, 1]."""
    logits = net.logits_layer.name
    if target.layer == logits:
        return lambda images: net(images, (logits,))[logits][:, target.index]
    layer = net.spec.layer(target.layer)
    if target.y is None or target.x is None:
        raise MicroscopeError(f"a unit's attribution needs its position: {target.layer}:{target.index}")
    if not 0 <= target.index < layer.channels:
        raise MicroscopeError(f"{target.layer} has no unit {target.index}")
    return lambda images: net(images, (target.layer,))[target.layer][:, target.index, target.y, target.x]


def attribute(net: Network, image: Tensor, target: Target, method: str, cam_layer: str | None = None,
              steps: int = IG_STEPS) -> tuple[np.ndarray, dict]:
    """The (H, W) map of ``method`` for ``target`` on one RGB image (3, H, W) in [0, 1], and its parameters and
    figures (integrated gradients' completeness: the attributions' sum against the target's change)."""
    from captum.attr import IntegratedGradients, LayerAttribution, LayerGradCam, Saliency

    inputs = image[None].clone().requires_grad_(True)
    device = next(net.parameters()).device
    inputs = inputs.to(device)
    with torch.enable_grad():
        if method == "gradient":
            values = Saliency(_scalar(net, target)).attribute(inputs, abs=True)
            return values[0].sum(dim=0).detach().cpu().numpy(), {"method": "Captum Saliency (|gradient|), summed over colour"}
        if method == "integrated_gradients":
            function = _scalar(net, target)
            baseline = torch.zeros_like(inputs)
            values, delta = IntegratedGradients(function).attribute(
                inputs, baselines=baseline, n_steps=steps, internal_batch_size=IG_BATCH, return_convergence_delta=True)
            with torch.no_grad():
                change = float(function(inputs) - function(baseline))
            return values[0].abs().sum(dim=0).detach().cpu().numpy(), {
                "method": "Captum IntegratedGradients, |attribution| summed over colour", "baseline": "black image",
                "steps": steps, "sum": round(float(values.detach().sum()), 5), "change": round(change, 5),
                "delta": round(float(delta.detach()), 5)}
        if method == "grad_cam":
            return _grad_cam(net, inputs, target, cam_layer, LayerGradCam, LayerAttribution)
    raise MicroscopeError(f"unknown attribution method {method!r}: choose from {', '.join(METHODS)}")


class _Tap(nn.Identity):
    """Where Captum hooks a layer's output (spliced into the network: `Network.spliced`)."""


def default_cam_layer_for(net: Network, target: Target) -> str:
    """Grad-CAM's layer for ``target``: a class's, the last convolutional main layer; a unit's, the main layer before
    its own."""
    if target.layer == net.logits_layer.name:
        return default_cam_layer(net).name
    spatial = [layer.name for layer in spatial_layers(net)]
    before = spatial[:spatial.index(target.layer)] if target.layer in spatial else []
    if not before:
        raise MicroscopeError(f"{target.layer} has no convolutional main layer before it for Grad-CAM")
    return before[-1]


def _grad_cam(net: Network, inputs: Tensor, target: Target, layer: str | None, grad_cam, interpolate) -> tuple[np.ndarray, dict]:  # noqa: ANN001
    inner = base_network(net)
    spec = inner.spec
    layer = layer or default_cam_layer_for(net, target)
    if layer not in [spatial.name for spatial in spatial_layers(net)]:
        raise MicroscopeError(f"Grad-CAM needs a main layer with a spatial map, not {layer}")
    logits = target.layer == inner.logits_layer.name
    names = spec.layer_names
    if not logits and names.index(layer) >= names.index(target.layer):
        raise MicroscopeError(f"Grad-CAM of {target.layer}:{target.index} needs a layer before {target.layer}, not {layer}")
    tap = _Tap()

    def tapped(output: Tensor) -> Tensor:  # a plain function: a traced network's graph calls it by name
        return tap(output)

    forward = inner.spliced(layer, tapped, None if logits else target.layer)
    if logits:
        function, index = forward, target.index
    else:
        def function(images: Tensor) -> Tensor:
            return forward(images)[:, target.index, target.y, target.x]
        index = None
    values = grad_cam(function, tap).attribute(inputs, target=index, relu_attributions=True)
    upsampled = interpolate.interpolate(values, tuple(inputs.shape[-2:]), "bilinear")
    return upsampled[0, 0].detach().cpu().numpy(), {"method": "Captum LayerGradCam, ReLU, upsampled bilinearly",
                                                    "layer": layer}


# Spatial attribution between layers (Building Blocks) ----------------------------------------------

#: Contributing units kept per probed unit.
CONTRIBUTORS = 5


def previous_layer(net: Network, layer: str) -> str | None:
    """The main layer with a map just before ``layer`` (what Building Blocks attributes a unit to)."""
    names = [spatial.name for spatial in spatial_layers(net)]
    return names[names.index(layer) - 1] if layer in names and names.index(layer) > 0 else None


def contributions(net: Network, image: Tensor, targets: Sequence[Target], count: int = CONTRIBUTORS) -> tuple[str, list[list[dict]]]:
    """For each target (units of one layer at a position), the units of the layer before whose activations
    times gradients add the most to it (Captum's LayerGradientXActivation at that layer's output, where the next
    layers read it): each with its share of the summed positive attribution and the position where it
    contributes most. One batched pass: image i of the batch explains target i."""
    from captum.attr import LayerGradientXActivation

    layer = targets[0].layer
    before = previous_layer(net, layer)
    if before is None or any(target.layer != layer for target in targets):
        raise MicroscopeError(f"{layer} has no main layer with a map before it to attribute to")
    inner = base_network(net)
    tap = _Tap()

    def tapped(output: Tensor) -> Tensor:
        return tap(output)

    forward = inner.spliced(before, tapped, layer)
    units = torch.tensor([t.index for t in targets])
    ys, xs = torch.tensor([t.y for t in targets]), torch.tensor([t.x for t in targets])

    def values(images: Tensor) -> Tensor:
        out = forward(images)
        rows = torch.arange(len(out))
        return out[rows, units.to(out.device), ys.to(out.device), xs.to(out.device)]

    inputs = image[None].expand(len(targets), -1, -1, -1).to(next(inner.parameters()).device)
    with torch.enable_grad():
        attributions = LayerGradientXActivation(values, tap).attribute(inputs).detach().float().cpu()
    found = []
    for maps in attributions:  # (C, H, W) for one target
        per_unit = maps.clamp(min=0).flatten(1).sum(dim=1)
        total = float(per_unit.sum()) or 1.0
        best = per_unit.topk(min(count, len(per_unit)))
        width = maps.shape[-1]
        found.append([{"layer": before, "unit": int(unit), "share": round(float(value) / total, 4),
                       "y": int(maps[unit].argmax()) // width, "x": int(maps[unit].argmax()) % width}
                      for value, unit in zip(best.values, best.indices) if value > 0])
    return before, found


# The sanity check: cascading model randomization --------------------------------------------------


def weight_groups(net: Network) -> list[tuple[str, list[nn.Module]]]:
    """The network's weight layers from the top down, grouped as the cascade randomizes them: a network's own
    `cascade_groups` where it has one, else the modules with weights grouped by their top-level module (a traced
    model's ``stem``, ``layer3``, ``fc``), one level further down where that leaves fewer than four groups or one
    holding over half of them (``features.3``), else one module a step."""
    inner = base_network(net)
    own = getattr(inner, "cascade_groups", None)
    if own is not None:
        return own()
    root = getattr(inner, "module", inner)  # a traced network wraps the user's module
    leaves = [(name, module) for name, module in root.named_modules()
              if name and not list(module.children()) and any(True for _ in module.parameters(recurse=False))]
    for level in (1, 2):
        groups: dict[str, list[nn.Module]] = {}
        for name, module in leaves:
            groups.setdefault(".".join(name.split(".")[:level]), []).append(module)
        if len(groups) >= 4 and max(len(members) for members in groups.values()) <= len(leaves) / 2:
            break
    else:
        groups = {name: [module] for name, module in leaves}
    return list(reversed(list(groups.items())))


@contextlib.contextmanager
def randomized(net: Network, depth: int, seed: int = 0) -> Iterator[Network]:
    """``net`` with its top ``depth`` weight groups re-initialized (each module's own initializer, seeded per group),
    its own weights put back on leaving."""
    inner = base_network(net)
    saved = {name: value.detach().clone() for name, value in inner.state_dict().items()}
    try:
        with torch.no_grad():
            for number, (_, modules) in enumerate(weight_groups(inner)[:depth]):
                torch.manual_seed(seed + number)
                for module in modules:
                    if hasattr(module, "reset_parameters"):
                        module.reset_parameters()
                    else:
                        for parameter in module.parameters(recurse=False):
                            nn.init.normal_(parameter, std=0.01)
        yield inner
    finally:
        inner.load_state_dict(saved)


def similarity(real: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    """Spearman's rank correlation (0 where a map is constant: no order to follow) and SSIM of two maps (each scaled
    to [0, 1] by its own maximum for SSIM)."""
    from scipy.stats import spearmanr
    from skimage.metrics import structural_similarity

    with warnings.catch_warnings():  # a constant map (Grad-CAM all zero) has no rank order: correlation 0 below
        warnings.simplefilter("ignore")
        rho = spearmanr(real.ravel(), other.ravel()).statistic
    scaled = [m / m.max() if m.max() > 0 else m for m in (real.astype(np.float64), other.astype(np.float64))]
    ssim = structural_similarity(scaled[0], scaled[1], data_range=1.0)
    return (0.0 if np.isnan(rho) else float(rho)), float(ssim)


def cascading_randomization(net: Network, images: Sequence[Tensor], methods: Sequence[str] = METHODS,
                            targets: Sequence[Target] | None = None, seed: int = 0,
                            poll: Callable[[], None] | None = None) -> dict[str, list[dict]]:
    """Per method, one entry per cascade step (top group first, cumulatively): the groups randomized so far and
    the per-image Spearman and SSIM of the map against the real network's, for each image's target (by default
    the real network's top class on it).

    The network is randomized in place and put back after each image (the same seeded weights each time), so
    ``poll``, called between images, finds the real network (a worker serves waiting requests there).
    """
    inner = base_network(net).eval()
    logits = inner.logits_layer.name
    if targets is None:
        with torch.no_grad():
            targets = [Target(logits, int(inner.logits(image[None]).argmax())) for image in images]
    real: dict[str, list[np.ndarray]] = {method: [] for method in methods}
    for image, target in zip(images, targets):
        for method in methods:
            real[method].append(attribute(inner, image, target, method)[0])
        if poll is not None:
            poll()
    groups = weight_groups(inner)
    out: dict[str, list[dict]] = {method: [] for method in methods}
    for depth in range(1, len(groups) + 1):
        pairs: dict[str, list[tuple[float, float]]] = {method: [] for method in methods}
        for number, (image, target) in enumerate(zip(images, targets)):
            with randomized(inner, depth, seed) as copy_net:
                maps = {method: attribute(copy_net, image, target, method)[0] for method in methods}
            for method in methods:
                pairs[method].append(similarity(real[method][number], maps[method]))
            if poll is not None:
                poll()
        for method in methods:
            out[method].append({"depth": depth, "randomized": groups[depth - 1][0],
                                "spearman": [round(p[0], 4) for p in pairs[method]],
                                "ssim": [round(p[1], 4) for p in pairs[method]]})
    return out
