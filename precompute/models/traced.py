"""Any PyTorch CNN as a `Network`: its spec derived from its traced graph, activations by layer name.

Activations come from torchvision's ``create_feature_extractor``, which cuts
the traced graph after the last node asked for (the early stop the stages
rely on) and is built once per set of layers. Weights are a state dict,
checked against the module with the file named in every error.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, fx, nn
from torchvision.models.feature_extraction import create_feature_extractor

from app.errors import MicroscopeError, WeightsError
from app.zoo.inceptionv1 import imagenet_classes, inception5h_classes
from app.zoo.spec import ClassLabel, LayerSpec, ModelSpec
from precompute.models.base import Network, Piece, Sink
from precompute.models.graph import Naming, Traced, Unit, derive_layers, is_pass, trace
from precompute.models.linear import linear_map
from precompute.weight_files import file_sha256

#: torchvision's ImageNet normalization (RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Functional ReLUs a traced graph may call (`TracedNetwork._relu_modules`).
FUNCTIONAL_RELUS = {torch.relu, torch.relu_, torch.nn.functional.relu, torch.nn.functional.relu_}
#: Feature extractors kept per network (one per set of layers asked for).
EXTRACTORS = 16


@dataclass(frozen=True)
class Description:
    """What a derived spec cannot read off the graph: names, titles, the input convention.

    A names file (``--names file.json``) gives any of these fields, e.g.
    ``{"name": "mynet", "names": {"layer1.0": "block1"}, "mean": [0.5, 0.5, 0.5]}``.
    """

    name: str
    title: str = ""
    description: str = ""
    input_size: int = 224
    names: dict[str, str] = field(default_factory=dict)
    channel_order: str = "RGB"
    value_range: tuple[float, float] = (0.0, 1.0)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    #: "imagenet" labels a 1,000-way classifier's units with ImageNet's classes; "inception5h" with the
    #: 1,008 outputs of TensorFlow's inception5h graph; "none" labels nothing.
    classes: str = "imagenet"
    #: How ``microscope model eval`` frames an image (see `ModelSpec.eval_framing`).
    eval_framing: str = "square"
    eval_resize: int = 256
    eval_interpolation: str = "bilinear"

    @classmethod
    def read(cls, path: Path, **defaults: Any) -> Description:
        try:
            given = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise MicroscopeError(f"{path}: not a readable JSON names file ({error})") from error
        if not isinstance(given, dict):
            raise MicroscopeError(f"{path}: a names file is a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(given) - known)
        if unknown:
            raise MicroscopeError(f"{path}: unknown fields {unknown}; known: {sorted(known)}")
        merged = {**defaults, **given}
        for key in ("value_range", "mean", "std"):
            merged[key] = tuple(merged[key]) if key in merged else getattr(cls, key)
        return cls(**merged)


def derive_spec(module: nn.Module, described: Description) -> tuple[ModelSpec, Traced, dict[str, Unit]]:
    """The spec of ``module``, read off its traced graph, with the names and input convention given."""
    traced = trace(module, described.input_size)
    layers, units = derive_layers(traced, Naming(described.names))
    logits = [layer for layer in layers if layer.kind == "logits"]
    if not logits:
        raise MicroscopeError(f"{described.name}: no fully connected layer on the trunk to read as logits")
    classes: tuple[ClassLabel, ...] = ()
    if described.classes == "imagenet" and logits[-1].channels == 1000:
        classes = imagenet_classes()
    elif described.classes == "inception5h" and logits[-1].channels == 1008:
        classes = inception5h_classes()
    spec = ModelSpec(
        name=described.name, title=described.title or described.name, description=described.description,
        input_size=described.input_size, channel_order=described.channel_order,  # type: ignore[arg-type]
        value_range=described.value_range, mean=described.mean, layers=layers, classes=classes,
        weights=None, std=described.std, eval_framing=described.eval_framing,  # type: ignore[arg-type]
        eval_resize=described.eval_resize, eval_interpolation=described.eval_interpolation,  # type: ignore[arg-type]
    )
    return spec, traced, units


class TracedNetwork(Network):
    """A module and the spec derived from it; the module's own forward is never changed."""

    def __init__(self, module: nn.Module, described: Description) -> None:
        spec, traced, units = derive_spec(module, described)
        super().__init__(spec)
        self.module = module.eval()
        self._traced = traced
        self._units = units
        self._extractors: OrderedDict[frozenset[str], nn.Module] = OrderedDict()
        #: One ReLU module for each place the graph calls a functional ReLU (shared by every graph built from it),
        #: so rules that rewrite a ReLU module's gradient (Captum's guided backprop) reach those places too.
        self.functional_relus = nn.ModuleDict({_relu_name(node): nn.ReLU() for node in traced.graph.nodes
                                               if _functional_relu(node)})  # here before any hook is set

    def forward(self, images: Tensor, layers: Iterable[str] | None = None, sink: Sink | None = None) -> dict[str, Tensor]:
        wanted = self.wanted(layers)
        paths = {name: self._value_paths(name) for name in wanted}
        extractor = self._extractor(frozenset(path for parts in paths.values() for path in parts))
        values = extractor(self.preprocess(images))
        found: dict[str, Tensor] = {}
        for name in sorted(wanted, key=self.spec.layer_names.index):
            parts = [values[path] for path in paths[name]]
            value = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            if sink is None:
                found[name] = value
            else:
                sink(name, value)
        return found

    def spliced(self, layer: str, edit: Callable[[Tensor], Tensor], output: str | None = None) -> Callable[[Tensor], Tensor]:
        """The module's graph, copied, with ``edit`` applied where ``layer``'s output flows on: a block's
        concatenation, else the ReLU after the layer's value (or the value, where no ReLU follows); its output
        is the module's, or ``output``'s value (the graph cut there)."""
        unit = self._units[layer]
        flow = unit.node
        if not unit.parts:
            relus = [user for user in flow.users if is_pass(self._traced, user)]
            flow = relus[0] if len(relus) == 1 and len(flow.users) == 1 else flow
        graph = fx.Graph()
        copied: dict[fx.Node, fx.Node] = {}
        result = graph.graph_copy(self._traced.graph, copied)
        if output is None:
            graph.output(result)
        else:
            target = self._units[output]
            if target.parts:
                raise MicroscopeError(f"{output} is a concatenation: ask for one of its branches, or the logits")
            graph.output(copied[target.node])
        at = copied[flow]
        with graph.inserting_after(at):
            edited = graph.call_function(edit, (at,))
        at.replace_all_uses_with(edited, delete_user_cb=lambda user: user is not edited)
        module = self._relu_modules(fx.GraphModule(self.module, graph))
        if output is not None:  # what comes after the output is never run
            module.graph.eliminate_dead_code()
            module.recompile()
        return lambda images: module(self.preprocess(images))

    def _value_paths(self, name: str) -> list[str]:
        unit = self._units[name]
        return [self._traced.qualnames[node] for node in (unit.parts or (unit.node,))]

    def _extractor(self, paths: frozenset[str]) -> nn.Module:
        if paths in self._extractors:
            self._extractors.move_to_end(paths)
            return self._extractors[paths]
        extractor = self._relu_modules(create_feature_extractor(self.module, return_nodes=sorted(paths)).eval())
        self._extractors[paths] = extractor
        if len(self._extractors) > EXTRACTORS:
            self._extractors.popitem(last=False)
        return extractor

    def _relu_modules(self, module: fx.GraphModule) -> fx.GraphModule:
        """``module`` with each functional ReLU call replaced by a call of its module in `functional_relus` (the same
        numbers; a module's hooks now see it)."""
        changed = False
        for node in list(module.graph.nodes):
            if not _functional_relu(node):
                continue
            name = _relu_name(node)  # the extractors' tracer names nodes as the spec's trace did
            if name not in self.functional_relus:
                self.functional_relus[name] = nn.ReLU()
            module.add_submodule(f"functional_relus.{name}", self.functional_relus[name])
            with module.graph.inserting_after(node):
                call = module.graph.call_module(f"functional_relus.{name}", (node.args[0],))
            node.replace_all_uses_with(call)
            module.graph.erase_node(node)
            changed = True
        if changed:
            module.recompile()
        return module

    def _apply(self, fn, *args, **kwargs):  # noqa: ANN001, ANN202 - nn.Module's signature
        self._extractors.clear()  # built again around the moved parameters
        return super()._apply(fn, *args, **kwargs)

    def linear_map(self, source: LayerSpec, target: LayerSpec) -> tuple[Piece, ...]:
        return (linear_map(self._traced, self._units[source.name], self._units[target.name], source.channels),)

    def approximation(self, source: LayerSpec, target: LayerSpec, indirect: bool) -> str | None:
        crossed = any(isinstance(module, nn.LocalResponseNorm) for module in self.module.modules())
        if not crossed:
            return None
        return "the network has local response normalizations, taken as the identity: weights are relative strengths"


def _functional_relu(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in FUNCTIONAL_RELUS)
            or (node.op == "call_method" and node.target in ("relu", "relu_")))


def _relu_name(node: fx.Node) -> str:
    return f"relu_{node.name}"


def load_state_dict(module: nn.Module, path: Path) -> str:
    """Load the state dict in ``path`` into ``module`` (every key and shape checked); its sha256."""
    if not path.is_file():
        raise WeightsError(f"{path}: no such weights file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load raises many kinds on a bad file
        raise WeightsError(f"{path}: not a PyTorch state dict ({type(error).__name__}: {str(error)[:200]})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, Tensor) for value in state.values()):
        raise WeightsError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    load_tensors(module, state, path)
    return file_sha256(path)


def load_tensors(module: nn.Module, state: dict[str, Tensor], path: Path) -> None:
    """Load ``state`` (read from ``path``) into ``module``: every key and shape checked, finite values only."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(key for key in set(state) & set(expected) if state[key].shape != expected[key].shape)
    if missing or unexpected or wrong:
        problems = [f"{label} {keys[:4]}{' …' if len(keys) > 4 else ''}" for label, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise WeightsError(f"{path}: not weights of this network: {'; '.join(problems)}")
    module.load_state_dict(state)
    for value in module.state_dict().values():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise WeightsError(f"{path}: holds NaN or infinite values")
