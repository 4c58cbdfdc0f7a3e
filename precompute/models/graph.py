"""A network's module graph, traced once, and the spec derived from it.

`trace` records every operation of a PyTorch module with ``torch.fx``
(through torchvision's ``NodePathTracer``, which names each node by its
module path, the names ``create_feature_extractor`` takes) and the shape of
every tensor at the model's input size. `derive_layers` reads the unit
layers off that graph, so no one writes them by hand:

- a convolution is a unit layer; its pre-ReLU value is the BatchNorm after it
  when there is one (the BN is folded into it);
- a sum of two paths (a residual block) is a unit layer, its value before the
  ReLU that follows;
- a concatenation of convolutions' outputs (an inception block) is a unit
  layer, the concatenation of its branches' pre-ReLU values;
- a fully connected layer is a unit layer, the last one the logits; a
  network that ends in a global pool of a convolution (SqueezeNet's conv10,
  ReLU, global average pool) has that pooled value as its logits layer;
- a zero padding before a convolution or pool (TensorFlow's "SAME" padding,
  which puts the odd row and column of a stride-2 window at the bottom and
  right) moves the grid by its top/left padding.

A layer is *main* when every path from the input to the output passes
through it (the trunk); the others are branches of the block they feed.
Geometry (size, stride, receptive field, offset) is propagated through the
graph from each operation's own kernel, stride and padding.
"""

from __future__ import annotations

import contextlib
import io
import operator
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torchvision.models.feature_extraction import NodePathTracer

from app.core.errors import MicroscopeError
from app.core.zoo import LayerSpec

#: Operations that leave a value's linear stand-in unchanged (and never make a unit layer).
#: Activations other than ReLU: in a linear map, the identity, as ReLU is.
OTHER_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.Tanh, nn.Sigmoid, nn.Hardsigmoid,
                     nn.PReLU)
PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.Dropout, nn.Identity, nn.LocalResponseNorm, *OTHER_ACTIVATIONS)
PASS_FUNCTIONS = {F.relu, torch.relu, F.dropout, F.relu6, F.gelu, F.silu, F.hardswish, F.leaky_relu, F.elu, F.mish}
#: Normalizations whose statistics come from each image (not from training, as BatchNorm's in eval): in a
#: linear map their learned per-channel scale stands in, the division by the image's own spread is left out.
IMAGE_NORMS = (nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)
PASS_METHODS = {"relu", "contiguous"}
ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d)
POOL_FUNCTIONS = {F.max_pool2d, F.avg_pool2d}
GLOBAL_POOL_MODULES = (nn.AdaptiveAvgPool2d, nn.AvgPool2d)
FLATTEN = {torch.flatten}


@dataclass(frozen=True)
class Grid:
    """Geometry of an activation map, in input pixels (``offset``: the centre of position 0)."""

    size: int
    stride: int
    receptive_field: int
    offset: int

    def window(self, kernel: int, stride: int, padding: int, size: int) -> Grid:
        """After a convolution or pool of this kernel; ``size`` is the measured output side."""
        return Grid(size, self.stride * stride, self.receptive_field + (kernel - 1) * self.stride,
                    self.offset + ((kernel - 1) // 2 - padding) * self.stride)

    @classmethod
    def whole(cls, input_size: int) -> Grid:
        """One position that sees the whole image (fully connected layers, global pools)."""
        return cls(1, input_size, input_size, input_size // 2)


@dataclass
class Traced:
    """A module's graph with every node's module path and output shape at ``input_size``."""

    module: nn.Module
    graph: fx.Graph
    qualnames: dict[fx.Node, str]
    input_size: int
    channels: int = 3
    nodes: list[fx.Node] = field(init=False)
    position: dict[fx.Node, int] = field(init=False)

    def __post_init__(self) -> None:
        self.nodes = list(self.graph.nodes)
        self.position = {node: index for index, node in enumerate(self.nodes)}

    def submodule(self, node: fx.Node) -> nn.Module | None:
        return self.module.get_submodule(str(node.target)) if node.op == "call_module" else None

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else ()


def trace(module: nn.Module, input_size: int, channels: int | None = None) -> Traced:
    """Trace ``module`` (in eval mode) and measure every node's shape on one blank image of ``channels`` (by
    default the first convolution's ``in_channels``)."""
    module.eval()
    tracer = NodePathTracer()
    try:
        graph = tracer.trace(module)
    except Exception as error:  # noqa: BLE001 - fx raises many kinds on untraceable code
        raise MicroscopeError(f"cannot trace {type(module).__name__} with torch.fx: {error}") from error
    graph_module = fx.GraphModule(tracer.root, graph)
    if channels is None:
        channels = input_channels(graph_module)
    parameter = next(module.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:  # ShapeProp prints the traceback of a failing node itself: the one line below says it
        with torch.no_grad(), contextlib.redirect_stderr(io.StringIO()):
            ShapeProp(graph_module).propagate(torch.zeros(1, channels, input_size, input_size, device=device))
    except Exception as error:  # noqa: BLE001 - any error of the module's own forward
        cause = error.__cause__ or error  # ShapeProp wraps the node's own error
        said = " ".join(str(cause).split())[:160]
        raise MicroscopeError(
            f"{type(module).__name__} does not run on a {channels}-channel {input_size}x{input_size} image "
            f"({type(cause).__name__}: {said}): give its input side and channels in a names file "
            '(--names file.json with {"input_size": 32, "channels": 1})') from error
    return Traced(module, graph_module.graph, dict(tracer.node_to_qualname), input_size, channels)


def input_channels(graph_module: fx.GraphModule) -> int:
    """The ``in_channels`` of the first convolution in the graph (3 where the graph has none)."""
    for node in graph_module.graph.nodes:
        if node.op == "call_module":
            module = graph_module.get_submodule(str(node.target))
            if isinstance(module, nn.Conv2d):
                return int(module.in_channels)
    return 3


def reads_fixed_map(traced: Traced) -> bool:
    """Whether the network flattens a map of more than one position (a ``Flatten`` then ``Linear``): it takes
    exactly its input size."""
    for node in traced.nodes:
        if flattens(traced, node) and tensor_args(node):
            shape = traced.shape(tensor_args(node)[0])
            if len(shape) == 4 and shape[2] * shape[3] > 1:
                return True
    return False


def tensor_args(node: fx.Node) -> list[fx.Node]:
    """The nodes a node reads, in order (a concatenation's list flattened)."""
    found: list[fx.Node] = []
    for arg in node.args:
        items = arg if isinstance(arg, (list, tuple)) else [arg]
        found.extend(item for item in items if isinstance(item, fx.Node))
    return found


def is_pass(traced: Traced, node: fx.Node) -> bool:
    module = traced.submodule(node)
    if module is not None:
        return isinstance(module, PASS_MODULES)
    return (node.op == "call_function" and node.target in PASS_FUNCTIONS) or (
        node.op == "call_method" and node.target in PASS_METHODS
    )


def is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in ADD_FUNCTIONS) or (
        node.op == "call_method" and node.target in ("add", "add_")
    )


def is_cat(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target is torch.cat


@dataclass(frozen=True)
class Unit:
    """A unit layer as found in the graph, before it gets its name and kind."""

    path: str
    kind: str
    #: Node holding the layer's pre-ReLU value (a mixed layer: the concatenation node).
    node: fx.Node
    #: A mixed layer's branches' value nodes, in concatenation order.
    parts: tuple[fx.Node, ...] = ()
    kernel: int = 0


def _module_path(qualname: str) -> str:
    """``layer1.0.add`` -> ``layer1.0``; ``inception3a.cat`` -> ``inception3a``."""
    return qualname.rsplit(".", 1)[0] if "." in qualname else qualname


def _behind_passes(traced: Traced, node: fx.Node) -> fx.Node:
    while is_pass(traced, node) and tensor_args(node):
        node = tensor_args(node)[0]
    return node


def find_units(traced: Traced) -> list[Unit]:
    """Every unit layer of the graph, in network order."""
    units: dict[fx.Node, Unit] = {}
    for node in traced.nodes:
        module = traced.submodule(node)
        if isinstance(module, nn.Conv2d):
            users = list(node.users)
            value = node
            if len(users) == 1 and isinstance(traced.submodule(users[0]), nn.BatchNorm2d):
                value = users[0]
            units[value] = Unit(traced.qualnames[node], "conv", value, kernel=int(module.kernel_size[0]))
        elif isinstance(module, nn.Linear):
            units[node] = Unit(traced.qualnames[node], "linear", node)
    pooled = _pooled_output(traced)
    if pooled is not None and not any(isinstance(traced.submodule(node), nn.Linear) for node in traced.nodes):
        flatten, pool = pooled
        units[flatten] = Unit(traced.qualnames[pool], "linear", flatten)
    # Sums and concatenations of units (seen through ReLUs) are the blocks' outputs.
    for node in traced.nodes:
        inputs = [_behind_passes(traced, arg) for arg in tensor_args(node)]
        if is_add(node) and len(inputs) >= 2 and all(_downstream_of_units(traced, arg, units) for arg in inputs):
            units[node] = Unit(_module_path(traced.qualnames[node]), "residual", node)
        elif is_cat(node) and len(inputs) >= 2 and all(arg in units for arg in inputs):
            units[node] = Unit(_module_path(traced.qualnames[node]), "mixed", node, parts=tuple(inputs))
    return sorted(units.values(), key=lambda unit: traced.position[unit.node])


def _pooled_output(traced: Traced) -> tuple[fx.Node, fx.Node] | None:
    """(flatten, global pool) where the network's output is a flattened global pool of a map, else None."""
    output = next(node for node in traced.nodes if node.op == "output")
    value = _behind_passes(traced, tensor_args(output)[0]) if tensor_args(output) else None
    if value is None or not flattens(traced, value) or not tensor_args(value):
        return None
    pool = _behind_passes(traced, tensor_args(value)[0])
    shape = traced.shape(pool)
    if isinstance(traced.submodule(pool), GLOBAL_POOL_MODULES) and len(shape) == 4 and shape[-1] == 1:
        return value, pool
    return None


def _downstream_of_units(traced: Traced, node: fx.Node, units: Mapping[fx.Node, Unit]) -> bool:
    seen, todo = set(), [node]
    while todo:
        current = todo.pop()
        if current in units:
            return True
        if current in seen:
            continue
        seen.add(current)
        todo.extend(tensor_args(current))
    return False


def cut_nodes(traced: Traced) -> set[fx.Node]:
    """Nodes every path from the input to the output crosses: no data edge jumps over them."""
    data = _data_nodes(traced)
    order = [node for node in traced.nodes if node in data]
    index = {node: i for i, node in enumerate(order)}
    cuts, reach = set(), 0
    for i, node in enumerate(order):
        if reach <= i:
            cuts.add(node)
        reach = max([reach] + [index[user] for user in node.users if user in index])
    return cuts


def _data_nodes(traced: Traced) -> set[fx.Node]:
    """Nodes whose value depends on the input image."""
    data: set[fx.Node] = set()
    for node in traced.nodes:
        if node.op == "placeholder" or any(arg in data for arg in tensor_args(node)):
            if node.op != "output":
                data.add(node)
    return data


@dataclass(frozen=True)
class Naming:
    """How a derived spec names its layers: module paths to names, the rest sanitized."""

    names: Mapping[str, str] = field(default_factory=dict)

    def name(self, path: str) -> str:
        if path in self.names:
            return self.names[path]
        return re.sub(r"[^A-Za-z0-9_]", "_", path)


def derive_layers(traced: Traced, naming: Naming) -> tuple[tuple[LayerSpec, ...], dict[str, Unit]]:
    """The unit layers of ``traced`` as specs, in network order, and each one's graph unit by name."""
    cuts = cut_nodes(traced)
    # A sum or concatenation off the trunk (a block inside a block) is not browsed: its parts are.
    units = [unit for unit in find_units(traced) if unit.kind in ("conv", "linear") or unit.node in cuts]
    if not units:
        raise MicroscopeError("the network has no convolution or fully connected layer to browse")
    named = {unit.node: naming.name(unit.path) for unit in units}
    duplicates = sorted({name for name in named.values() if list(named.values()).count(name) > 1})
    if duplicates:
        raise MicroscopeError(f"two layers would share the names {duplicates}: rename them in a names file")
    grids = _grids(traced)
    main = [unit for unit in units if unit.node in cuts]
    main_names = [named[unit.node] for unit in main]
    logits = max((unit for unit in main if unit.kind == "linear"), key=lambda u: traced.position[u.node], default=None)
    layers = []
    for unit in units:
        name, is_main = named[unit.node], unit.node in cuts
        kind = ("logits" if unit is logits else unit.kind) if is_main else "branch"
        if unit.kind == "mixed":
            inputs = tuple(named[part] for part in unit.parts)
        else:
            inputs = tuple(named[node] for node in _nearest_units(traced, unit, named))
        previous = main_names[main_names.index(name) - 1] if is_main and main_names.index(name) > 0 else None
        block = name if unit.kind in ("mixed", "residual") else None
        if not is_main:  # a branch belongs to the block it feeds: the next main layer
            later = [m for m in main if traced.position[m.node] > traced.position[unit.node]]
            block = named[later[0].node] if later else None
        grid = grids[unit.node]
        layers.append(LayerSpec(
            name=name, channels=traced.shape(unit.node)[1], kind=kind, size=grid.size,  # type: ignore[arg-type]
            stride=grid.stride, receptive_field=grid.receptive_field, offset=grid.offset, inputs=inputs,
            previous=previous, kernel=unit.kernel, block=block,
        ))
    return tuple(layers), {named[unit.node]: unit for unit in units}


def _nearest_units(traced: Traced, unit: Unit, units: Mapping[fx.Node, str]) -> list[fx.Node]:
    """The unit layers a unit reads directly (through anything that is not a unit), in graph order."""
    start = unit.node
    if isinstance(traced.submodule(start), nn.BatchNorm2d):
        start = tensor_args(start)[0]  # the conv itself
    found: set[fx.Node] = set()
    seen: set[fx.Node] = set()
    todo = list(tensor_args(start))
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        if node in units:
            found.add(node)
        else:
            todo.extend(tensor_args(node))
    return sorted(found, key=lambda node: traced.position[node])


def _grids(traced: Traced) -> dict[fx.Node, Grid]:
    """Every node's geometry, propagated from the input through kernels, strides and paddings."""
    size = traced.input_size
    grids: dict[fx.Node, Grid] = {}
    for node in traced.nodes:
        args = [grids[arg] for arg in tensor_args(node) if arg in grids]
        shape = traced.shape(node)
        measured = shape[-1] if len(shape) == 4 else 1
        if node.op == "placeholder":
            grids[node] = Grid(size, 1, 1, 0)
            continue
        if not args:
            continue
        grid = max(args, key=lambda g: g.receptive_field)
        window = _window(traced, node)
        padding = zero_padding(traced, node)
        if padding is not None:
            grids[node] = Grid(measured, grid.stride, grid.receptive_field, grid.offset - padding * grid.stride)
        elif window is not None:
            grids[node] = grid.window(*window, size=measured)
        elif isinstance(traced.submodule(node), nn.Linear) or flattens(traced, node) and grid.size > 1:
            grids[node] = Grid.whole(size)  # fully connected: one position that sees everything
        elif len(shape) == 4 and measured == 1 and grid.size > 1:
            grids[node] = Grid.whole(size)  # a global pool
        elif _keeps_grid(traced, node):  # a permute around a LayerNorm over channels: the same positions
            grids[node] = grid
        elif len(shape) == 4 and measured != grid.size and grid.size > 1:  # an adaptive pool to a smaller grid
            stride = grid.size // measured
            grids[node] = grid.window(grid.size - (measured - 1) * stride, stride, 0, size=measured)
        else:
            grids[node] = grid
    return grids


def _keeps_grid(traced: Traced, node: fx.Node) -> bool:
    """Operations that move axes or normalize without changing positions (their shapes may put the channels last)."""
    return (node.op == "call_method" and node.target in ("permute", "transpose", "contiguous")) or (
        node.op == "call_function" and node.target in (torch.permute, torch.transpose)) or isinstance(
        traced.submodule(node), IMAGE_NORMS)


def zero_padding(traced: Traced, node: fx.Node) -> int | None:
    """The top/left padding of a zero padding node (``nn.ZeroPad2d``), None for any other node.

    The bottom/right padding may differ (TensorFlow's "SAME"); the top and left must agree.
    """
    module = traced.submodule(node)
    if not isinstance(module, nn.ZeroPad2d):
        return None
    left, right, top, bottom = module.padding
    if left != top or right != bottom:
        raise MicroscopeError(f"{traced.qualnames[node]}: padding {module.padding} is not the same on both axes")
    return int(left)


def flattens(traced: Traced, node: fx.Node) -> bool:
    """A flattening of a map into one vector per image: ``torch.flatten``, ``x.view(...)``, ``nn.Flatten``."""
    return (node.op == "call_function" and node.target in FLATTEN) or (
        node.op == "call_method" and node.target in ("flatten", "view", "reshape")
    ) or isinstance(traced.submodule(node), nn.Flatten)


def _window(traced: Traced, node: fx.Node) -> tuple[int, int, int] | None:
    """(kernel, stride, padding) of a convolution or pool node (a dilated kernel at its full span)."""
    module = traced.submodule(node)
    if isinstance(module, nn.Conv2d):
        span = module.dilation[0] * (module.kernel_size[0] - 1) + 1
        return span, int(module.stride[0]), _padding(module.padding, span)
    if isinstance(module, POOL_MODULES):
        return _pair(module.kernel_size), _pair(module.stride or module.kernel_size), _pair(module.padding)
    if node.op == "call_function" and node.target in POOL_FUNCTIONS:
        options = _pool_options(node)
        return options["kernel"], options["stride"], options["padding"]
    return None


def _pool_options(node: fx.Node) -> dict[str, int]:
    names = ("input", "kernel_size", "stride", "padding")
    given: dict[str, Any] = dict(zip(names, node.args))
    given.update(node.kwargs)
    kernel = _pair(given["kernel_size"])
    stride = given.get("stride")
    return {"kernel": kernel, "stride": _pair(stride) if stride else kernel, "padding": _pair(given.get("padding", 0))}


def _pair(value: object) -> int:
    if isinstance(value, (tuple, list)):
        if len(set(value)) != 1:
            raise MicroscopeError(f"non-square kernels, strides or paddings ({value}) are not supported")
        return int(value[0])
    return int(value)  # type: ignore[arg-type]


def _padding(padding: object, span: int) -> int:
    if padding == "same":
        return (span - 1) // 2
    if padding == "valid":
        return 0
    return _pair(padding)

