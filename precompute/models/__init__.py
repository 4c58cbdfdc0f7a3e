"""Every network the stages can run, behind one interface (`Network`), found by ``--model``.

- ``inceptionv1``: BVLC GoogLeNet, written by hand from its spec, Caffe weights (the default);
- ``googlenet``, ``resnet50``, ``vgg19``, ``alexnet``: torchvision's, weights through its API;
- ``package.module:factory``: your own module (the factory returns it, ``--weights`` is its state dict).
"""

from __future__ import annotations

import difflib
import importlib
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from app.errors import MicroscopeError, UnknownModel
from app.zoo import DEFAULT_MODEL, ModelSpec, get_model
from precompute.models.base import Network, Piece
from precompute.models.traced import Description, TracedNetwork, load_state_dict
from precompute.weight_files import file_sha256
from precompute.models.zoo import ZOO, fetch, mirrored, official_prefix

__all__ = ["Loaded", "Network", "Piece", "load", "model_names", "build", "seeded_state_dict"]


@dataclass(frozen=True)
class Loaded:
    net: Network
    #: Names the weights in every recipe: the checksum list's digest (BVLC) or the state dict's sha256.
    weights_sha256: str
    #: A line the user should read (weights that are not the published ones).
    note: str | None = None


def model_names() -> tuple[str, ...]:
    return (DEFAULT_MODEL, *ZOO)


def build(model: str, names: Path | None = None) -> Network:
    """The network of ``model`` with freshly initialized weights (seeded by the caller)."""
    if model == DEFAULT_MODEL:
        from precompute.models.inceptionv1 import InceptionV1

        return InceptionV1(get_model(model))
    module, described = _module(model, names)
    return TracedNetwork(module, described)


def load(model: str, weights: Path | None, names: Path | None = None) -> Loaded:
    """The network of ``model`` with its checked weights, frozen, in eval mode, channels-last."""
    if model == DEFAULT_MODEL:
        from precompute.models.bvlc import load_network
        from precompute.weight_files import locate

        net, checksums = load_network(get_model(model), locate(get_model(model), weights))
        return Loaded(net, checksums.digest)
    module, described = _module(model, names)
    note = None
    if weights is None:
        if model not in ZOO:
            raise MicroscopeError(f"{model}: give its weights with --weights FILE (a state dict saved by torch.save)")
        weights = fetch(mirrored(ZOO[model].url))
    elif model in ZOO and not file_sha256(weights).startswith(official_prefix(ZOO[model])):
        note = (f"{weights} is not torchvision's published {model} weights (sha256 prefix "
                f"{official_prefix(ZOO[model])}): pictures and circuits show these weights")
    digest = load_state_dict(module, weights)
    net = TracedNetwork(module, described)
    net.to(memory_format=torch.channels_last).eval().requires_grad_(False)
    return Loaded(net, digest, note)


def catalogued(model: str, weights: Path | None, names: Path | None = None) -> tuple[ModelSpec, str]:
    """The spec and weights digest of ``model`` without loading its weights (what the catalog stage needs)."""
    if model == DEFAULT_MODEL:
        from precompute.weight_files import Checksums

        return get_model(model), Checksums.of(get_model(model)).digest
    spec = build(model, names).spec  # an unknown name fails here, before any download
    if weights is None and model in ZOO:
        weights = fetch(mirrored(ZOO[model].url))
    if weights is None or not weights.is_file():
        raise MicroscopeError(f"{model}: give its weights with --weights FILE (a state dict saved by torch.save)")
    return spec, file_sha256(weights)


def _module(model: str, names: Path | None) -> tuple[nn.Module, Description]:
    if model in ZOO:
        entry = ZOO[model]
        described = entry.describe()
        if names is not None:
            described = Description.read(names, name=entry.name, title=entry.title,
                                         description=entry.description, names=entry.names)
        return entry.build(), described
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
