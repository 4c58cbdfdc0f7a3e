"""Every network the stages can run, behind one interface (`Network`), found by ``--model``.

A name is either an entry of the registry (`app.core.zoo.registry`: its source
says how its weights are read) or ``package.module:factory``, your own module
(the factory returns it, ``--weights`` is its state dict). No stage or
command looks at a model's name: they call `load`, `build` and `catalogued`.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from app.core.errors import MicroscopeError, UnknownModel
from app.core.zoo import REGISTRY, Entry, ModelSpec, get_model
from precompute.models import sources
from precompute.models.base import Network, Piece
from precompute.models.traced import Description, TracedNetwork, load_state_dict

__all__ = ["Loaded", "Network", "Piece", "load", "model_names", "build", "catalogued", "seeded_state_dict"]


@dataclass(frozen=True)
class Loaded:
    net: Network
    #: Names the weights in every recipe: a checksum list's digest (raw files) or the weights file's sha256.
    weights_sha256: str
    #: A line the user should read (weights that are not the published ones).
    note: str | None = None


def model_names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def build(model: str, names: Path | None = None) -> Network:
    """The network of ``model`` with freshly initialized weights (seeded by the caller)."""
    entry = REGISTRY.get(model)
    if entry is not None and entry.source == "bvlc":
        from precompute.models.inceptionv1 import InceptionV1

        return InceptionV1(get_model(model))
    module, described = _module(model, names)
    return TracedNetwork(module, described)


def load(model: str, weights: Path | None, names: Path | None = None) -> Loaded:
    """The network of ``model`` with its checked weights, frozen, in eval mode, channels-last."""
    entry = REGISTRY.get(model)
    if entry is not None and entry.source == "bvlc":
        from precompute.models.bvlc import load_network
        from precompute.models.weight_files import locate

        spec = get_model(model)
        net, checksums = load_network(spec, locate(spec, weights))
        return Loaded(net, checksums.digest)
    module, described = _module(model, names)
    if entry is not None:
        found = sources.locate(entry, weights)
        sources.load(entry, module, found)
        digest, note = found.digest, found.note
    elif weights is None:
        raise MicroscopeError(f"{model}: give its weights with --weights FILE (a state dict saved by torch.save)")
    else:
        digest, note = load_state_dict(module, weights), None
    net = TracedNetwork(module, described)
    net.to(memory_format=torch.channels_last).eval().requires_grad_(False)
    return Loaded(net, digest, note)


def catalogued(model: str, weights: Path | None, names: Path | None = None) -> tuple[ModelSpec, str]:
    """The spec and weights digest of ``model`` without loading its weights (what the catalog stage needs)."""
    entry = REGISTRY.get(model)
    if entry is not None and entry.source == "bvlc":
        from precompute.models.weight_files import Checksums

        return get_model(model), Checksums.of(get_model(model)).digest
    net = build(model, names)  # an unknown name fails here, before any download
    if entry is not None:
        return net.spec, sources.locate(entry, weights).digest
    if weights is None:
        raise MicroscopeError(f"{model}: give its weights with --weights FILE (a state dict saved by torch.save)")
    assert isinstance(net, TracedNetwork)
    return net.spec, load_state_dict(net.module, weights)  # checked now, not at the first stage that runs it


def describe(entry: Entry) -> Description:
    """What a traced network's spec takes from its registry entry."""
    return Description(
        name=entry.name, title=entry.title, description=entry.description, input_size=entry.input_size,
        names=dict(entry.names), channel_order=entry.channel_order, value_range=entry.value_range, mean=entry.mean,
        std=entry.std, classes=entry.classes, eval_framing=entry.evaluation.framing,
        eval_resize=entry.evaluation.resize, eval_interpolation=entry.evaluation.interpolation,
    )


def _module(model: str, names: Path | None) -> tuple[nn.Module, Description]:
    if model in REGISTRY:
        entry = REGISTRY[model]
        described = describe(entry)
        if names is not None:
            described = Description.read(names, **{key: value for key, value in vars(described).items()})
        return sources.module(entry), described
    if ":" not in model:
        raise UnknownModel(model, tuple(difflib.get_close_matches(model, model_names(), n=3)))
    path, _, attribute = model.partition(":")
    if str(Path.cwd()) not in sys.path:
        sys.path.insert(0, str(Path.cwd()))  # a module next to where the command runs, as `python -m` finds it
    try:
        factory = getattr(importlib.import_module(path), attribute)
    except (ImportError, AttributeError) as error:
        raise MicroscopeError(f"--model {model}: cannot import {attribute} from {path} ({error})") from error
    module = factory()
    if not isinstance(module, nn.Module):
        raise MicroscopeError(f"--model {model}: the factory returned a {type(module).__name__}, not a torch module")
    default = Description(name=attribute.lower().replace("_", "-"))
    return module, (Description.read(names, name=default.name) if names is not None else default)


def seeded_state_dict(model: str, seed: int, names: Path | None = None) -> dict[str, torch.Tensor]:
    """Random weights for ``model``, the same for a seed on every machine (to try the pipeline without the real ones)."""
    torch.manual_seed(seed)
    module = build(model, names)
    if isinstance(module, TracedNetwork):
        module = module.module
    for submodule in module.modules():
        if isinstance(submodule, nn.BatchNorm2d):  # running statistics as a trained net's, not 0 and 1
            submodule.running_mean.uniform_(-0.1, 0.1)
            submodule.running_var.uniform_(0.5, 1.5)
    return {key: value.contiguous() for key, value in module.state_dict().items()}
