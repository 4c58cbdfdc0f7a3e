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

from app.core.errors import MicroscopeError
from app.core.zoo import LayerSpec
from app.core.zoo.skips import has_map
from precompute.models.base import Network
from precompute.models.derived import base_network

#: The methods a probe's maps are made with (`app.attribution.PROBE_METHODS`, checked equal by a test).
METHODS = ("gradient", "integrated_gradients", "grad_cam")
#: The randomization test's negative controls: methods Adebayo et al. found insensitive to the model's weights (guided
#: backprop and guided Grad-CAM). A test that cannot fail them cannot pass anything else either.
CONTROLS = ("guided_backprop", "guided_grad_cam")
ALL_METHODS = METHODS + CONTROLS
#: What the randomization test explains: each image's top class, or its deepest layer's most active unit.
TARGET_KINDS = ("class", "unit")
#: Integrated gradients' path: steps of the Gauss-Legendre rule (Captum's default method), evaluated this many at once.
IG_STEPS = 20
IG_BATCH = 20


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
    return [layer for layer in base_network(net).spec.main_layers if has_map(layer)]


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


@dataclass(frozen=True)
class Maps:
    """One method's explanation of one target on one image, at the input's resolution.

    ``signed``: the attribution before any absolute value or ReLU (summed over colour for the pixel methods; Grad-CAM's
    weighted sum before its ReLU); ``shown``: the map as pages show it (absolute values summed over colour; Grad-CAM's
    ReLU'd map). The randomization test compares both (Adebayo et al. compare maps with and without absolute values).
    """

    signed: np.ndarray
    shown: np.ndarray
    params: dict


def attribute(net: Network, image: Tensor, target: Target, method: str, cam_layer: str | None = None,
              steps: int = IG_STEPS) -> tuple[np.ndarray, dict]:
    """The (H, W) map of ``method`` for ``target`` on one RGB image (3, H, W) in [0, 1], as pages show it, and its
    parameters and figures (integrated gradients' completeness: the attributions' sum against the target's change)."""
    maps = attribute_maps(net, image, target, method, cam_layer, steps)
    return maps.shown, maps.params


def attribute_maps(net: Network, image: Tensor, target: Target, method: str, cam_layer: str | None = None,
                   steps: int = IG_STEPS) -> Maps:
    """Both maps (`Maps`) of ``method`` for ``target`` on one RGB image (3, H, W) in [0, 1]."""
    from captum.attr import GuidedBackprop, IntegratedGradients, Saliency

    if method not in ALL_METHODS:
        raise MicroscopeError(f"unknown attribution method {method!r}: choose from {', '.join(ALL_METHODS)}")
    device = next(net.parameters()).device
    inputs = image[None].clone().to(device).requires_grad_(True)
    with torch.enable_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")  # Captum says so on every call
        if method in ("grad_cam", "guided_grad_cam"):
            return _grad_cam(net, inputs, target, cam_layer, guided=method == "guided_grad_cam")
        function = _scalar(net, target)
        if method == "gradient":
            values = Saliency(function).attribute(inputs, abs=False)
            return _pixel_maps(values, {"method": "Captum Saliency (the gradient); shown: |gradient| summed over colour"})
        if method == "guided_backprop":
            values = GuidedBackprop(_Forward(net, function)).attribute(inputs)
            return _pixel_maps(values, {"method": "Captum GuidedBackprop (every ReLU module's gradient rectified); "
                                                  "shown: |attribution| summed over colour"})
        baseline = torch.zeros_like(inputs)
        values, delta = IntegratedGradients(function).attribute(
            inputs, baselines=baseline, n_steps=steps, internal_batch_size=IG_BATCH, return_convergence_delta=True)
        with torch.no_grad():
            change = float(function(inputs) - function(baseline))
        return _pixel_maps(values, {
            "method": "Captum IntegratedGradients; shown: |attribution| summed over colour", "baseline": "black image",
            "steps": steps, "sum": round(float(values.detach().sum()), 5), "change": round(change, 5),
            "delta": round(float(delta.detach()), 5)})


def _pixel_maps(values: Tensor, params: dict) -> Maps:
    values = values[0].detach().float().cpu()
    return Maps(values.sum(dim=0).numpy(), values.abs().sum(dim=0).numpy(), params)


class _Forward(nn.Module):
    """A function of the network as a module, for Captum's methods that hook the model's modules (guided backprop
    rewrites the gradient of every ``nn.ReLU`` under it: the network is a submodule, so all of its ReLUs are)."""

    def __init__(self, net: Network, function: Callable[[Tensor], Tensor], tap: nn.Module | None = None) -> None:
        super().__init__()
        self.net = net
        self.tap = tap
        self.function = function

    def forward(self, images: Tensor) -> Tensor:
        return self.function(images)


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


def _grad_cam(net: Network, inputs: Tensor, target: Target, layer: str | None, guided: bool) -> Maps:
    from captum.attr import GuidedGradCam, LayerAttribution, LayerGradCam

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
    # Grad-CAM before its ReLU (the signed map); the shown map is its ReLU, as Selvaraju et al. and Captum define it.
    values = LayerGradCam(function, tap).attribute(inputs, target=index, relu_attributions=False)
    signed = LayerAttribution.interpolate(values, tuple(inputs.shape[-2:]), "bilinear")[0, 0].detach().float().cpu()
    if not guided:
        return Maps(signed.numpy(), signed.clamp(min=0).numpy(),
                    {"method": "Captum LayerGradCam, upsampled bilinearly; shown: its ReLU", "layer": layer})
    # Captum's GuidedGradCam: guided backprop times Grad-CAM's ReLU'd map, upsampled to the input (nearest, its default).
    product = GuidedGradCam(_Forward(inner, function, tap), tap).attribute(inputs, target=index)[0].detach().float().cpu()
    return Maps(product.sum(dim=0).numpy(), product.abs().sum(dim=0).numpy(),
                {"method": "Captum GuidedGradCam (guided backprop times Grad-CAM's ReLU'd map, upsampled nearest); "
                           "shown: |attribution| summed over colour", "layer": layer})


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


#: The figures each image's pair of maps gets, in this order (see `compare`).
FIGURES = ("spearman", "spearman_signed", "ssim", "hog")


def degenerate(map_: np.ndarray) -> bool:
    """A map with no order to compare: a non-finite value, or the same value everywhere (all zero included)."""
    return not np.isfinite(map_).all() or float(map_.max()) == float(map_.min())


def compare(real: Maps, other: Maps) -> dict[str, float] | None:
    """Adebayo et al.'s similarity figures of two maps of one image, or None where either map is degenerate (a constant
    or non-finite map has no rank order: it is counted, never scored as decorrelated):

    - ``spearman``: Spearman rank correlation of the shown maps (absolute values; Grad-CAM's ReLU);
    - ``spearman_signed``: of the signed maps;
    - ``ssim``: SSIM (scikit-image) of the shown maps, each scaled to [0, 1] by its own range;
    - ``hog``: Pearson correlation of the shown maps' histograms of oriented gradients (scikit-image's ``hog``, 9
      orientations, 16x16-pixel cells, 2x2-cell blocks).
    """
    from scipy.stats import pearsonr, spearmanr
    from skimage.feature import hog
    from skimage.metrics import structural_similarity

    if any(degenerate(m) for m in (real.shown, other.shown, real.signed, other.signed)):
        return None
    scaled = [(m - m.min()) / (m.max() - m.min()) for m in (real.shown.astype(np.float64), other.shown.astype(np.float64))]
    histograms = [hog(m, orientations=9, pixels_per_cell=(16, 16), cells_per_block=(2, 2)) for m in scaled]
    figures = {
        "spearman": float(spearmanr(real.shown.ravel(), other.shown.ravel()).statistic),
        "spearman_signed": float(spearmanr(real.signed.ravel(), other.signed.ravel()).statistic),
        "ssim": float(structural_similarity(scaled[0], scaled[1], data_range=1.0)),
        "hog": (float(pearsonr(histograms[0], histograms[1]).statistic)
                if histograms[0].std() > 0 and histograms[1].std() > 0 else float("nan")),
    }
    return None if any(np.isnan(value) for value in figures.values()) else figures


def top_unit_target(net: Network, image: Tensor) -> Target:
    """The unit target a probe explains: the deepest layer with a map's most active unit (pre-ReLU), at its strongest
    position."""
    inner = base_network(net)
    layer = spatial_layers(inner)[-1].name
    with torch.no_grad():
        values = inner(image[None], (layer,))[layer][0]
    channels, _, width = values.shape
    flat = int(values.flatten().argmax())
    unit, position = divmod(flat, values.shape[1] * width)
    return Target(layer, unit, position // width, position % width)


def cascading_randomization(net: Network, images: Sequence[Tensor], methods: Sequence[str] = ALL_METHODS,
                            kind: str = "class", seed: int = 0,
                            poll: Callable[[], None] | None = None) -> tuple[dict[str, list[dict]], dict[str, str]]:
    """Per method, one entry per cascade step (top group first, cumulatively): the groups randomized so far and, per
    image, `compare`'s figures of the method's map on the randomized network against the real network's (None where a
    map is degenerate). ``kind``: ``class`` explains the real network's top class on each image, ``unit`` the deepest
    layer's most active unit at its strongest position (`top_unit_target`). Also each method's Grad-CAM layer ("" for
    the pixel methods).

    The network is randomized in place and put back after each image (the same seeded weights each time), so
    ``poll``, called between images, finds the real network (a worker serves waiting requests there).
    """
    if kind not in TARGET_KINDS:
        raise MicroscopeError(f"unknown target kind {kind!r}: choose from {', '.join(TARGET_KINDS)}")
    inner = base_network(net).eval()
    logits = inner.logits_layer.name
    if kind == "class":
        with torch.no_grad():
            targets = [Target(logits, int(inner.logits(image[None]).argmax())) for image in images]
    else:
        targets = [top_unit_target(inner, image) for image in images]
    real: dict[str, list[Maps]] = {method: [] for method in methods}
    layers: dict[str, str] = {}
    for image, target in zip(images, targets):
        for method in methods:
            maps = attribute_maps(inner, image, target, method)
            real[method].append(maps)
            layers[method] = maps.params.get("layer", "")
        if poll is not None:
            poll()
    groups = weight_groups(inner)
    out: dict[str, list[dict]] = {method: [] for method in methods}
    for depth in range(1, len(groups) + 1):
        pairs: dict[str, list[dict | None]] = {method: [] for method in methods}
        for number, (image, target) in enumerate(zip(images, targets)):
            with randomized(inner, depth, seed) as copy_net:
                maps = {method: attribute_maps(copy_net, image, target, method) for method in methods}
            for method in methods:
                pairs[method].append(compare(real[method][number], maps[method]))
            if poll is not None:
                poll()
        for method in methods:
            out[method].append({"depth": depth, "randomized": groups[depth - 1][0], "pairs": pairs[method]})
    return out, layers
