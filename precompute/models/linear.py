"""The linear map between two unit layers of a traced graph, composed operation by operation.

Walking the graph from the source layer to the target in network order, each
node that depends on the source gets the `Kernel` from the source to its
value, with the stand-ins of Distill's "Visualizing Weights":

- convolution (any kernel, stride, padding or groups): composed with its weights;
- zero padding (TensorFlow's "SAME"): the grid moves by its top/left padding;
- BatchNorm (eval): its scale folded into the kernel before it (its shift is
  a bias, which a weight between units does not include);
- ReLU, dropout, LRN, identity: the identity;
- max and average pools: an average pool over the same window;
- a residual sum: the sum of its paths' kernels (the identity path included);
- a concatenation: the parts' kernels one after another (zeros for parts the
  source does not reach);
- a global average pool: the sum over positions (so a classifier's summed
  kernel is its weight, as in InceptionV1's circuits); flattening a wider map
  makes the fully connected layer after it a kernel as wide as the map.

Any other operation on the way has no stand-in here and is reported by name.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import fx, nn

from app.core.errors import MicroscopeError
from precompute.methods.kernels import Kernel
from precompute.models.base import Piece
from precompute.models.graph import (
    IMAGE_NORMS,
    POOL_FUNCTIONS,
    POOL_MODULES,
    Traced,
    Unit,
    flattens,
    _window,
    is_add,
    zero_padding,
    is_cat,
    is_pass,
    tensor_args,
)


@dataclass(frozen=True)
class _Flow:
    """The map from the source to one node's value."""

    kernel: Kernel
    #: (channels, height, width) of a map flattened for a fully connected layer, when wider than one position.
    flat: tuple[int, int, int] | None = None
    #: Weighted operations crossed (convolutions, fully connected layers) and stand-ins crossed.
    layers: int = 0
    stand_ins: int = 0


def linear_map(traced: Traced, source: Unit, target: Unit, channels: int) -> Piece:
    """The kernel from ``source``'s ``channels`` units to every unit of ``target``."""
    flows = {part: _Flow(Kernel(rows)) for part, rows in _parts(traced, source, channels)}
    start = min(traced.position[part] for part in flows)
    ends = target.parts or (target.node,)
    last = max(traced.position[node] for node in ends)
    for node in traced.nodes[start + 1 : last + 1]:
        if node in flows:  # a seed: the source's own value
            continue
        flow = _step(traced, node, flows)
        if flow is not None:
            flows[node] = flow
    if target.kind == "mixed":
        found = [(flows.get(part), traced.shape(part)[1]) for part in target.parts]
        flow = _concatenate(found, channels)
    else:
        flow = flows.get(target.node)
    if flow is None:
        raise MicroscopeError(f"{target.path} does not read {source.path}")
    return Piece(0, flow.kernel, flow.layers > 1 or flow.stand_ins > 0)


def _parts(traced: Traced, source: Unit, channels: int) -> list[tuple[fx.Node, torch.Tensor]]:
    """The nodes holding the source's value, each with its rows of the identity (a mixed layer's branches)."""
    if source.kind != "mixed":
        return [(source.node, torch.eye(channels)[:, :, None, None])]
    parts, offset = [], 0
    for part in source.parts:
        width = traced.shape(part)[1]
        rows = torch.zeros(width, channels, 1, 1)
        rows[torch.arange(width), torch.arange(offset, offset + width)] = 1
        parts.append((part, rows))
        offset += width
    return parts


def _step(traced: Traced, node: fx.Node, flows: dict[fx.Node, _Flow]) -> _Flow | None:
    """The flow to ``node`` from the flows to its inputs; None where it does not depend on the source."""
    inputs = [flows.get(arg) for arg in tensor_args(node)]
    if not any(inputs):
        return None
    module = traced.submodule(node)
    flow = next(item for item in inputs if item is not None)
    if isinstance(module, nn.Conv2d):
        return _through_conv(module, flow)
    if isinstance(module, nn.BatchNorm2d):
        return replace(flow, kernel=flow.kernel.scaled(_bn_scale(module)))
    if isinstance(module, nn.Linear):
        return _through_linear(module, flow)
    if is_pass(traced, node):
        return flow
    if isinstance(module, IMAGE_NORMS):
        return replace(flow, kernel=flow.kernel.scaled(_norm_scale(traced, node, module)), stand_ins=flow.stand_ins + 1)
    if _around_channels_norm(traced, node):
        return flow
    padding = zero_padding(traced, node)
    if padding is not None:
        kernel = flow.kernel
        return replace(flow, kernel=Kernel(kernel.weights, kernel.stride, kernel.padding + padding * kernel.stride))
    window = _pool_window(traced, node)
    if window is not None:
        kernel, stride, padding = window
        return replace(flow, kernel=flow.kernel.then_pool(kernel, stride, padding), stand_ins=flow.stand_ins + 1)
    if _is_adaptive_pool(traced, node) or _is_mean(node):
        return _through_adaptive(traced, node, flow)
    if flattens(traced, node):
        shape = traced.shape(tensor_args(node)[0])
        wide = len(shape) == 4 and shape[2] * shape[3] > 1
        return replace(flow, flat=tuple(shape[1:]) if wide else None)  # type: ignore[arg-type]
    if is_add(node):
        present = [item for item in inputs if item is not None]
        total = present[0].kernel
        for other in present[1:]:
            total = total.plus(other.kernel)
        return _Flow(total, None, max(item.layers for item in present), sum(item.stand_ins for item in present) + 1)
    if is_cat(node) and node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0) in (1, -3):
        return _concatenate([(flows.get(arg), traced.shape(arg)[1]) for arg in tensor_args(node)],
                            flow.kernel.weights.shape[1])
    raise MicroscopeError(f"no linear stand-in for {traced.qualnames.get(node, node.name)} ({node.target})")


def _through_conv(module: nn.Conv2d, flow: _Flow) -> _Flow:
    if module.dilation[0] != 1:
        raise MicroscopeError("dilated convolutions have no composed kernel here")
    padding = module.padding if isinstance(module.padding, str) else module.padding[0]
    if padding == "same":
        padding = (module.kernel_size[0] - 1) // 2
    elif padding == "valid":
        padding = 0
    kernel = Kernel.of_conv(module.weight, int(module.stride[0]), int(padding), module.groups)
    return replace(flow, kernel=kernel.after(flow.kernel), layers=flow.layers + 1)


def _norm_scale(traced: Traced, node: fx.Node, module: nn.Module) -> torch.Tensor:
    """The learned per-channel scale of a GroupNorm, InstanceNorm or a LayerNorm over the channels (ones where it
    has none); a LayerNorm over anything but the channels has no stand-in."""
    channels = traced.shape(node)[1] if not isinstance(module, nn.LayerNorm) else traced.shape(node)[-1]
    if isinstance(module, nn.LayerNorm) and (len(module.normalized_shape) != 1 or not _around_channels_norm(
            traced, tensor_args(node)[0])):
        raise MicroscopeError(f"no linear stand-in for {traced.qualnames.get(node, node.name)}: a LayerNorm over "
                              "more than the channels")
    weight = getattr(module, "weight", None)
    return weight.detach().float().cpu() if weight is not None else torch.ones(channels)


def _around_channels_norm(traced: Traced, node: fx.Node) -> bool:
    """A permute that moves the channels last for a LayerNorm, or back after it (ConvNeXt's LayerNorm over channels)."""
    if not (node.op == "call_method" and node.target == "permute"):
        return False
    order = tuple(arg for arg in node.args[1:]) if len(node.args) > 2 else tuple(node.args[1]) if len(node.args) > 1 else ()
    users = list(node.users)
    if order == (0, 2, 3, 1):
        return len(users) == 1 and isinstance(traced.submodule(users[0]), nn.LayerNorm)
    if order == (0, 3, 1, 2):
        source = tensor_args(node)[0]
        return isinstance(traced.submodule(source), nn.LayerNorm)
    return False


def _bn_scale(module: nn.BatchNorm2d) -> torch.Tensor:
    scale = torch.rsqrt(module.running_var.float() + module.eps)
    return scale * module.weight.float() if module.weight is not None else scale


def _through_linear(module: nn.Linear, flow: _Flow) -> _Flow:
    weight = module.weight.detach().float().cpu()
    if flow.flat is not None:
        channels, height, width = flow.flat
        if height != width:
            raise MicroscopeError("a fully connected layer over a non-square map has no square kernel")
        kernel = Kernel(weight.reshape(weight.shape[0], channels, height, width), 1, 0)
    else:
        kernel = Kernel(weight[:, :, None, None])
    return _Flow(kernel.after(flow.kernel), None, flow.layers + 1, flow.stand_ins)


def _concatenate(found: list[tuple[_Flow | None, int]], columns: int) -> _Flow | None:
    present = [flow for flow, _ in found if flow is not None]
    if not present:
        return None
    stride = present[0].kernel.stride
    kernels = [flow.kernel if flow is not None else Kernel(torch.zeros(width, columns, 1, 1), stride, 0)
               for flow, width in found]
    return _Flow(Kernel.stacked(kernels), None, max(f.layers for f in present), max(f.stand_ins for f in present))


def _pool_window(traced: Traced, node: fx.Node) -> tuple[int, int, int] | None:
    if isinstance(traced.submodule(node), POOL_MODULES) or (node.op == "call_function" and node.target in POOL_FUNCTIONS):
        return _window(traced, node)
    return None


def _is_adaptive_pool(traced: Traced, node: fx.Node) -> bool:
    return isinstance(traced.submodule(node), nn.AdaptiveAvgPool2d) or (
        node.op == "call_function" and node.target is F.adaptive_avg_pool2d
    )


def _is_mean(node: fx.Node) -> bool:
    return node.op == "call_method" and node.target == "mean" or (
        node.op == "call_function" and node.target is torch.mean
    )


def _through_adaptive(traced: Traced, node: fx.Node, flow: _Flow) -> _Flow:
    before, after = traced.shape(tensor_args(node)[0]), traced.shape(node)
    if len(after) != 4 or after[-1] == 1:  # global: the sum over positions (InceptionV1's convention)
        return replace(flow, flat=None)
    if after[-2:] == before[-2:]:
        return flow
    stride = before[-1] // after[-1]
    size = before[-1] - (after[-1] - 1) * stride
    return replace(flow, kernel=flow.kernel.then_pool(size, stride, 0), stand_ins=flow.stand_ins + 1)
