"""Pretrained parameter files: located, checked and, where no folder is given, downloaded once.

The BVLC GoogLeNet ships as raw little-endian float32 files, one filter and
one bias per Caffe layer, filters in (out, kh, kw, in) order (see
../shared/models/bvlc_googlenet/README.md). Every file is checked against the
pinned SHA256 list kept in ``app/core/zoo`` before a single number is used.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from app.core.errors import MicroscopeError, WeightsError
from app.core.zoo import ModelSpec


@dataclass(frozen=True)
class Checksums:
    """The pinned ``sha256  relative/path`` list of a model's files."""

    files: dict[str, str]
    #: Digest of the list itself: names one set of weights in run recipes.
    digest: str

    @classmethod
    def of(cls, spec: ModelSpec) -> Checksums:
        return cls.named(spec.weights.checksums)

    @classmethod
    def named(cls, name: str) -> Checksums:
        """The list ``name`` kept in ``app/core/zoo``."""
        text = resources.files("app.core.zoo").joinpath(name).read_text(encoding="utf-8")
        files = {}
        for line in text.splitlines():
            if line.strip():
                digest, path = line.split(maxsplit=1)
                files[path.strip().lstrip("*")] = digest
        return cls(files=files, digest=hashlib.sha256(text.encode()).hexdigest())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def expected_shapes(spec: ModelSpec) -> dict[str, tuple[int, ...]]:
    """The (out, kh, kw, in) shape of every filter file and (out,) of every bias file."""
    shapes: dict[str, tuple[int, ...]] = {}
    for layer in spec.layers:
        if layer.weights is None:
            continue
        fan_in = sum(spec.layer(name).channels for name in layer.inputs) if layer.inputs else 3
        kernel = max(layer.kernel, 1)
        shapes[f"weights/{layer.weights}_filter.bin"] = (layer.channels, kernel, kernel, fan_in)
        shapes[f"weights/{layer.weights}_bias.bin"] = (layer.channels,)
    return shapes


def verify(folder: Path, spec: ModelSpec) -> Checksums:
    """Check every file of ``spec`` in ``folder``: present, of the right size, matching its checksum."""
    if not folder.is_dir():
        raise WeightsError(f"weights folder {folder} does not exist")
    checksums = Checksums.of(spec)
    for path, shape in expected_shapes(spec).items():
        file = folder / path
        if not file.is_file():
            raise WeightsError(f"{file}: missing (expected {spec.name} weights of shape {shape})")
        size = file.stat().st_size
        if size != 4 * int(np.prod(shape)):
            raise WeightsError(f"{file}: {size} bytes, expected {4 * int(np.prod(shape))} (float32 {shape})")
        actual = file_sha256(file)
        if actual != checksums.files[path]:
            raise WeightsError(f"{file}: sha256 {actual}, expected {checksums.files[path]}")
    return checksums


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "neuron-microscope"


def download(spec: ModelSpec, cache: Path, base_url: str | None = None) -> Path:
    """Fetch ``spec``'s files once into ``cache`` (checked; resumes file by file) and return the folder."""
    return fetch_checked(Checksums.of(spec), base_url or spec.weights.base_url, cache / spec.name, WeightsError)


def fetch_checked(checksums: Checksums, base_url: str, folder: Path, error: type[MicroscopeError],
                  place: Callable[[str], str] | None = None) -> Path:
    """Every file of ``checksums`` from ``base_url`` into ``folder``, once: a file already there with its
    checksum is kept; a download lands under its name only once its checksum matches (else ``error``).

    ``place`` gives a file's path under ``folder`` where it differs from its path under ``base_url``.
    """
    for path, digest in checksums.files.items():
        target = folder / (place(path) if place else path)
        if target.is_file() and file_sha256(target) == digest:
            continue
        download_to(base_url.rstrip("/") + "/" + urllib.parse.quote(path), target, error, digest)
    return folder


#: No single download may be larger than this (the largest pinned file is a few tens of MB).
MAX_DOWNLOAD_BYTES = 500_000_000


def download_to(url: str, target: Path, error: type[MicroscopeError], sha256: str | None = None,
                limit: int = MAX_DOWNLOAD_BYTES, sha256_prefix: str | None = None) -> None:
    """``url`` into ``target``: read into a temporary file beside it (at most ``limit`` bytes), checked
    against ``sha256`` where one is pinned (or the start of it, ``sha256_prefix``, where only that is
    published), and only then renamed into place (else ``error``, nothing kept)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as partial:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                copied = 0
                while block := response.read(1 << 20):
                    copied += len(block)
                    if copied > limit:
                        raise error(f"{url}: larger than {limit:,} bytes, refused")
                    partial.write(block)
        except (OSError, MicroscopeError) as failure:
            Path(partial.name).unlink()
            if isinstance(failure, MicroscopeError):
                raise
            raise error(f"could not download {url}: {failure}") from failure
    actual = file_sha256(Path(partial.name))
    if (sha256 is not None and actual != sha256) or (sha256_prefix is not None and not actual.startswith(sha256_prefix)):
        Path(partial.name).unlink()
        raise error(f"{url}: sha256 {actual}, expected {sha256 or sha256_prefix + '...'}")
    os.replace(partial.name, target)


#: Where this repository's CI and a developer checkout find the shared weights.
SHARED_MODELS = Path(__file__).resolve().parents[3] / "shared" / "models"


def locate(spec: ModelSpec, folder: Path | None, cache: Path | None = None) -> Path:
    """The weights folder: the one given, else ../shared/models/<folder>, else a (checked) download."""
    if folder is not None:
        return folder
    shared = SHARED_MODELS / spec.weights.folder
    return shared if shared.is_dir() else download(spec, cache or default_cache())
