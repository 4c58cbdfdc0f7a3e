"""Any PyTorch CNN as a `Network`: its spec derived from its traced graph, activations by layer name.

Activations come from torchvision's ``create_feature_extractor``, which cuts
the traced graph after the last node asked for (the early stop the stages
rely on) and is built once per set of layers. Weights are a state dict,
checked against the module with the file named in every error.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, fx, nn
from torchvision.models.feature_extraction import create_feature_extractor

from app.core.errors import MicroscopeError, WeightsError
from app.core.zoo.inceptionv1 import imagenet_classes, inception5h_classes
from app.core.zoo.spec import ClassLabel, LayerSpec, ModelSpec
from precompute.models.base import Network, Piece, Sink
from precompute.models.graph import IMAGE_NORMS, OTHER_ACTIVATIONS, Naming, Traced, Unit, derive_layers, is_pass, reads_fixed_map, trace
from precompute.models.linear import linear_map
from precompute.models.weight_files import file_sha256

#: torchvision's ImageNet normalization (RGB in [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Functional ReLUs a traced graph may call (`TracedNetwork._relu_modules`).
FUNCTIONAL_RELUS = {torch.relu, torch.relu_, torch.nn.functional.relu, torch.nn.functional.relu_}
#: The names file's words for its classes (any other string is an image folder).
CLASS_KEYWORDS = ("imagenet", "inception5h", "none")
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
    #: Per input channel; None: ImageNet's for a 3-channel network (a 1-channel one must say).
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    #: Input channels (1: grayscale, 3: RGB, others: ``.npy`` or TIFF arrays); None: the first convolution's
    #: ``in_channels``.
    channels: int | None = None
    #: "imagenet" labels a 1,000-way classifier's units with ImageNet's classes; "inception5h" with the
    #: 1,008 outputs of TensorFlow's inception5h graph; "none" labels nothing; a list names each output (an
    #: image folder's subfolder of that name holds the class's images, as torchvision's ``ImageFolder``); any other
    #: string is an image folder whose subfolders name the classes, sorted (``ImageFolder``'s order; a relative path
    #: is read from the names file's folder).
    classes: str | tuple[str, ...] = "imagenet"
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
        folder = given.get("classes")
        if isinstance(folder, str) and folder not in CLASS_KEYWORDS:
            merged["classes"] = str(path.parent / folder)
        if isinstance(merged.get("classes"), list):
            if not all(isinstance(name, str) and name for name in merged["classes"]):
                raise MicroscopeError(f"{path}: classes is a list of non-empty names, \"imagenet\" or \"none\"")
            merged["classes"] = tuple(merged["classes"])
        for key in ("value_range", "mean", "std"):
            if merged.get(key) is not None:
                merged[key] = tuple(merged[key])
        return cls(**merged)

    def normalization(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The mean and std of each of ``channels`` input channels, checked."""
        if self.mean is None and self.std is None and channels == 3:
            return IMAGENET_MEAN, IMAGENET_STD
        if self.mean is None or self.std is None:
            raise MicroscopeError(
                f"{self.name}: a {channels}-channel network's input mean and std go in a names file "
                f'(--names file.json with {{"mean": {[0.5] * channels}, "std": {[0.5] * channels}}})')
        for key, values in (("mean", self.mean), ("std", self.std)):
            if len(values) != channels:
                raise MicroscopeError(f"{self.name}: the names file's {key} has {len(values)} values for "
                                      f"{channels} input channels")
        if any(value <= 0 for value in self.std):
            raise MicroscopeError(f"{self.name}: the names file's std must be positive, not {list(self.std)}")
        return self.mean, self.std


def class_folders(folder: Path) -> tuple[str, ...]:
    """The class names an image folder gives: its subfolders' names, sorted (torchvision's ``ImageFolder``)."""
    if not folder.is_dir():
        raise MicroscopeError(f"classes: {folder} is neither \"imagenet\", \"inception5h\", \"none\" nor an image folder")
    names = sorted(entry.name for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))
    if not names:
        raise MicroscopeError(f"classes: {folder} has no subfolders to name the classes (one folder a class)")
    return tuple(names)


def derive_spec(module: nn.Module, described: Description) -> tuple[ModelSpec, Traced, dict[str, Unit]]:
    """The spec of ``module``, read off its traced graph, with the names and input convention given."""
    traced = trace(module, described.input_size, described.channels)
    mean, std = described.normalization(traced.channels)
    layers, units = derive_layers(traced, Naming(described.names))
    logits = [layer for layer in layers if layer.kind == "logits"]
    classes: tuple[ClassLabel, ...] = ()
    named = described.classes
    source = "the names file names"
    if isinstance(named, str) and named not in CLASS_KEYWORDS:
        named, source = class_folders(Path(named)), f"{named} has subfolders for"
    if isinstance(named, tuple):
        outputs = logits[-1].channels if logits else 0
        if len(named) != outputs:
            raise MicroscopeError(f"{described.name}: {source} {len(named)} classes; the "
                                  f"network's classifier has {outputs} outputs")
        classes = tuple(ClassLabel(index, name, name) for index, name in enumerate(named))
    elif not logits:
        pass  # a backbone: no classifier, no class pages
    elif described.classes == "imagenet" and logits[-1].channels == 1000:
        classes = imagenet_classes()
    elif described.classes == "inception5h" and logits[-1].channels == 1008:
        classes = inception5h_classes()
    spec = ModelSpec(
        name=described.name, title=described.title or described.name, description=described.description,
        input_size=described.input_size, channel_order=described.channel_order,  # type: ignore[arg-type]
        value_range=described.value_range, mean=mean, layers=layers, classes=classes,
        weights=None, std=std, eval_framing=described.eval_framing,  # type: ignore[arg-type]
        eval_resize=described.eval_resize, eval_interpolation=described.eval_interpolation,  # type: ignore[arg-type]
        channels=traced.channels, fixed_input=reads_fixed_map(traced),
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
        modules = list(self.module.modules())
        notes = []
        if any(isinstance(module, nn.LocalResponseNorm) for module in modules):
            notes.append("local response normalizations taken as the identity")
        if any(isinstance(module, IMAGE_NORMS) for module in modules):
            notes.append("GroupNorm, LayerNorm and InstanceNorm as their learned scale (each image's own spread "
                         "left out)")
        if any(isinstance(module, OTHER_ACTIVATIONS) for module in modules):
            notes.append("activations other than ReLU (GELU, SiLU, Hardswish...) taken as the identity, as ReLU is")
        if not notes:
            return None
        return "the network has " + "; ".join(notes) + ": weights are relative strengths"


def _functional_relu(node: fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in FUNCTIONAL_RELUS)
            or (node.op == "call_method" and node.target in ("relu", "relu_")))


def _relu_name(node: fx.Node) -> str:
    return f"relu_{node.name}"


#: Suffixes of the files ``--weights FOLDER`` looks for in a folder.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".jit", ".ts", ".pickle", ".pkl")
#: Set by ``--trust-pickle``: a whole pickled module may be unpickled.
TRUST_PICKLE = "MICROSCOPE_TRUST_PICKLE"


def weights_in(given: Path, suffixes: tuple[str, ...] = CHECKPOINT_SUFFIXES) -> Path:
    """``given`` if it is a file; in a folder, its one file with one of ``suffixes`` (a model's folder holds its
    README and checksums beside it)."""
    if given.is_file():
        return given
    if not given.is_dir():
        raise WeightsError(f"{given}: no such weights file or folder")
    found = sorted(path for path in given.iterdir() if path.is_file() and path.suffix.lower() in suffixes)
    if len(found) != 1:
        listed = ", ".join(path.name for path in found) or "none"
        raise WeightsError(f"{given}: a folder of weights holds one file ending in {' '.join(suffixes)} "
                           f"(found: {listed}); pass the file itself")
    return found[0]


def load_state_dict(module: nn.Module, path: Path) -> str:
    """Load the checkpoint at ``path`` (or the one in that folder) into ``module`` (every key and shape checked);
    its sha256.

    A state dict saved by ``torch.save`` (also inside ``{"state_dict": ...}``), a ``.safetensors`` file, a
    TorchScript file (its parameters and buffers), or, with ``--trust-pickle``, a whole pickled module.
    """
    path = weights_in(path)
    state = read_checkpoint(path)
    load_tensors(module, state, path)
    return file_sha256(path)


def read_checkpoint(path: Path) -> dict[str, Tensor]:
    """The tensors of the checkpoint at ``path`` by parameter name; one line for a file that is none."""
    if path.suffix.lower() == ".safetensors" or _is_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as error:
            raise WeightsError(f"{path}: not a safetensors file ({str(error)[:200]})") from error
    if _is_torchscript(path):
        try:
            scripted = torch.jit.load(str(path), map_location="cpu")
        except Exception as error:  # noqa: BLE001 - TorchScript raises many kinds on a bad archive
            raise WeightsError(f"{path}: a TorchScript file that does not load ({str(error)[:200]})") from error
        return dict(scripted.state_dict())
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:  # an object the safe unpickler refuses: a whole module, or worse
        if "Weights only load failed" not in str(error):
            raise WeightsError(f"{path}: not a PyTorch state dict ({str(error)[:200]})") from error
        if os.environ.get(TRUST_PICKLE) != "1":
            raise WeightsError(
                f"{path}: a whole pickled object (torch.save(model)), not a state dict; unpickling it runs any code "
                "it holds, so it is not loaded: save torch.save(model.state_dict(), 'weights.pt'), or pass "
                "--trust-pickle if you made the file") from error
        state = _trusted(path)
    except Exception as error:  # noqa: BLE001 - torch.load raises many kinds on a bad file
        raise WeightsError(f"{path}: not a PyTorch state dict ({type(error).__name__}: {str(error)[:200]})") from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(value, Tensor) for value in state.values()):
        raise WeightsError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return state


def _trusted(path: Path) -> dict[str, Tensor]:
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=False)  # the user vouched for this file
    except Exception as error:  # noqa: BLE001 - unpickling raises anything
        raise WeightsError(f"{path}: does not unpickle ({type(error).__name__}: {str(error)[:200]})") from error
    if isinstance(loaded, nn.Module):
        return dict(loaded.state_dict())
    return loaded


def _is_safetensors(path: Path) -> bool:
    """safetensors' layout: an 8-byte little-endian header length, then a JSON header."""
    with path.open("rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 100_000_000


def _is_torchscript(path: Path) -> bool:
    """A TorchScript archive: a zip whose entries include its code (``<name>/code/``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any("/code/" in name for name in archive.namelist())


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
