"""Image sources: folders and WebDataset tar shards, listed, labelled and loaded in batches, robustly.

A source is a folder of JPEG, PNG or WebP files (for a network of other than
1 or 3 input channels: ``.npy`` arrays and TIFF files of its channels), with
or without class subfolders, a WebDataset shard (a ``.tar`` of ``key.jpg`` members, with an
optional ``key.cls`` holding the class index), or a folder of such shards
beside (or instead of) image files: any number of images, read in order,
decoded in worker processes. Where the first folder of an image's path is a
synset of the model's classes, or its shard gives a ``.cls``, that is its
label. Unreadable or truncated images never stop a pass: they are skipped
and reported by path.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import multiprocessing.context
import tarfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from app.core.errors import DatasetError
from app.core.zoo import ModelSpec

if TYPE_CHECKING:
    from precompute.models.weight_files import Checksums

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
#: What a network of other than 1 or 3 input channels reads: arrays of its channels (`Planes`).
PLANE_SUFFIXES = frozenset({".npy", ".tif", ".tiff"})
SHARD_SUFFIX = ".tar"


@dataclass(frozen=True)
class ImageFile:
    root: Path
    #: Path relative to the dataset root, with forward slashes: the image's identity. A shard's member
    #: is ``shard.tar/member`` (the root is the shard itself when the source is one shard).
    path: str
    label: int | None
    #: Where a shard member's bytes are in its tar file: (the shard's path under root, offset, size).
    member: tuple[str, int, int] | None = None

    @property
    def full_path(self) -> Path:
        return self.root / self.member[0] if self.member else self.root / self.path

    @property
    def size(self) -> int:
        return self.member[2] if self.member else self.full_path.stat().st_size

    def read_bytes(self) -> bytes:
        if self.member is None:
            return self.full_path.read_bytes()
        _, offset, size = self.member
        with self.full_path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read(size)
        if len(data) != size:
            raise OSError(f"{self.full_path}: truncated shard ({self.path} needs {size} bytes at {offset})")
        return data


def reads_planes(spec: ModelSpec | None) -> bool:
    """Whether ``spec``'s network reads arrays of its channels (`Planes`) rather than RGB image files."""
    return spec is not None and spec.channels not in (1, 3)


def list_images(root: Path, spec: ModelSpec | None = None) -> list[ImageFile]:
    """Every image under ``root`` (a folder, or one ``.tar`` shard) in a stable (sorted) order, labelled where
    the folder is a synset or the shard has the image's ``.cls``; for a network of other than 1 or 3 channels,
    its ``.npy`` and TIFF files instead."""
    synsets = {label.synset: label.index for label in spec.classes} if spec else {}
    suffixes = PLANE_SUFFIXES if reads_planes(spec) else IMAGE_SUFFIXES
    if root.is_file() and root.suffix == SHARD_SUFFIX:
        return _shard(root, "", synsets, suffixes)
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    files: list[ImageFile] = []
    for path in sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()):
        suffix = Path(path).suffix.lower()
        if suffix in suffixes:
            files.append(ImageFile(root, path, synsets.get(path.split("/")[0]) if "/" in path else None))
        elif suffix == SHARD_SUFFIX:
            files.extend(_shard(root, path, synsets, suffixes))
    if not files:
        kinds = (f".npy arrays or TIFF files of its {spec.channels} channels (height x width x channels)"  # type: ignore[union-attr]
                 if reads_planes(spec) else "JPEG, PNG or WebP images")
        raise DatasetError(f"image folder {root} holds no {kinds}, nor .tar shards of them")
    return files


def _shard(root: Path, shard: str, synsets: dict[str, int], suffixes: frozenset[str] = IMAGE_SUFFIXES) -> list[ImageFile]:
    """The images of the WebDataset shard ``root / shard`` (``shard`` empty: ``root`` is the shard) in member
    order, named ``shard/member``; a damaged shard keeps the members before the damage."""
    images: list[tuple[str, int, int]] = []
    classes: dict[str, int] = {}
    try:
        with tarfile.open(root / shard, mode="r:") as tar:
            for member in tar:
                key, suffix = _split(member.name)
                if member.isfile() and suffix in suffixes:
                    images.append((member.name, member.offset_data, member.size))
                elif member.isfile() and suffix == ".cls" and member.size < 32:
                    text = tar.extractfile(member).read().decode(errors="replace").strip()  # type: ignore[union-attr]
                    if text.isdigit():
                        classes[key] = int(text)
            end = tar.offset
        problem = _damage(root / shard, end, images)
    except (tarfile.TarError, OSError) as error:
        if not images:
            raise DatasetError(f"{root / shard}: not a readable tar shard ({error})") from error
        problem = str(error)
    if problem:
        images = [image for image in images if image[1] + image[2] <= (root / shard).stat().st_size]
        warnings.warn(f"{root / shard}: damaged after {len(images)} images, the rest left out ({problem})",
                      stacklevel=2)
    return [
        ImageFile(root, f"{shard}/{name}" if shard else name, classes.get(_split(name)[0], synsets.get(name.split("/")[0]) if "/" in name else None),
                  (shard, offset, size))
        for name, offset, size in images
    ]


def _damage(path: Path, end: int, images: list[tuple[str, int, int]]) -> str | None:
    """What is wrong with a shard whose members ``tarfile`` read up to ``end``, or None: tarfile stops
    quietly at a broken header, so what follows the last member must be the tar's zero padding."""
    size = path.stat().st_size
    if images and images[-1][1] + images[-1][2] > size:
        return f"{images[-1][0]} ends past the end of the file"
    if size - end < 2 * tarfile.BLOCKSIZE:
        return "no end-of-archive blocks: the file was cut short"
    with path.open("rb") as handle:
        handle.seek(end)
        while block := handle.read(1 << 20):
            if block.strip(b"\0"):
                return f"no tar header at byte {end}"
    return None


def _split(name: str) -> tuple[str, str]:
    """A WebDataset member's key and extension: everything up to the first dot of its file name."""
    folder, _, base = name.rpartition("/")
    stem, dot, rest = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), ("." + rest.rsplit(".", 1)[-1].lower() if dot else "")


def decode_rgb(data: bytes, name: str) -> Image.Image:
    """The image in ``data`` in RGB; raises OSError (with ``name``) when it cannot be decoded fully."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise OSError(f"{name}: {error}") from error


class Planes:
    """An image of any number of channels (a multispectral ``.npy`` or TIFF file): float values, height x width x
    channels, as the file holds them (the network's mean and std apply as to an RGB image's [0, 1] values).

    It offers the few calls the stages make on a PIL image (``width``, ``height``, ``crop``, ``resize``), so
    framing, crops and batches treat both alike; `display` draws it for the pages.
    """

    def __init__(self, values: np.ndarray) -> None:
        self.values = values

    @property
    def width(self) -> int:
        return self.values.shape[1]

    @property
    def height(self) -> int:
        return self.values.shape[0]

    @property
    def channels(self) -> int:
        return self.values.shape[2]

    def crop(self, box: tuple[int, int, int, int]) -> Planes:
        left, top, right, bottom = box
        return Planes(self.values[top:bottom, left:right])

    def resize(self, size: tuple[int, int], resample: object = None) -> Planes:
        """Bilinear, antialiased (as PIL's bilinear resize of an image); ``resample`` is PIL's, ignored."""
        resized = torch.nn.functional.interpolate(self.tensor()[None], size=(size[1], size[0]), mode="bilinear",
                                                  align_corners=False, antialias=True)[0]
        return Planes(resized.permute(1, 2, 0).numpy())

    def tensor(self) -> Tensor:
        """Channels x height x width, float32."""
        return torch.from_numpy(np.ascontiguousarray(self.values.transpose(2, 0, 1), dtype=np.float32))

    def display(self) -> Image.Image:
        """A false-colour composite: each channel stretched between its 1st and 99th percentile (as astronomers
        and remote sensing show such images), then given its own hue (`false_colour`)."""
        values = self.values.astype(np.float32)
        low, high = np.percentile(values, [1, 99], axis=(0, 1))
        stretched = (values - low) / np.where(high > low, high - low, 1)
        return Image.fromarray(false_colour(np.clip(stretched, 0, 1)))


def hues(channels: int) -> np.ndarray:
    """One RGB colour per channel, hues evenly spaced from red (channels x 3, in [0, 1])."""
    angle = np.arange(channels)[:, None] / channels * 2 * np.pi - np.array([0, 2, 4]) * np.pi / 3
    return np.clip(0.5 + np.cos(angle), 0, 1)


def false_colour(values: np.ndarray) -> np.ndarray:
    """Channels in [0, 1] (height x width x channels) as RGB (uint8): a sum of each channel times its hue
    (`hues`), scaled so that every channel at 1 is white; one channel is gray, three are R, G and B as given."""
    channels = values.shape[2]
    if channels == 1:
        rgb = np.repeat(values, 3, axis=2)
    elif channels == 3:
        rgb = values
    else:
        colours = hues(channels)
        rgb = values @ colours / colours.sum(axis=0)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def channel_strip(values: np.ndarray) -> np.ndarray:
    """The composite of ``values`` (height x width x channels in [0, 1]) above a strip of each channel in gray,
    side by side, each tile the composite's width over the channel count (uint8 RGB)."""
    height, width, channels = values.shape
    if channels in (1, 3):
        return false_colour(values)
    tile = max(1, width // channels)
    tiles = Planes(values).resize((tile, tile)).values
    strip = np.full((tile, width, 3), 255, dtype=np.uint8)
    for channel in range(channels):
        gray = (np.clip(tiles[:, :, channel], 0, 1) * 255).round().astype(np.uint8)
        strip[:, channel * tile:(channel + 1) * tile] = gray[:, :, None]
    return np.concatenate([false_colour(values), np.full((1, width, 3), 255, dtype=np.uint8), strip])


def decode_planes(data: bytes, name: str) -> Planes:
    """The array in ``data`` (``.npy``, or TIFF by ``name``'s suffix) as `Planes`; OSError (with ``name``) when it
    is not a finite numeric array of height x width (x channels). A TIFF stored channel-first (planar, fewer
    planes than rows and at most 64) is turned channel-last."""
    suffix = Path(name).suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(io.BytesIO(data), allow_pickle=False)
        else:
            import tifffile

            logging.getLogger("tifffile").setLevel(logging.ERROR)  # its damage is reported here, once, by name
            array = tifffile.imread(io.BytesIO(data))
            if array.ndim == 3 and array.shape[0] < min(array.shape[1:]) and array.shape[0] <= 64:
                array = array.transpose(1, 2, 0)
    except (OSError, ValueError, EOFError) as error:
        raise OSError(f"{name}: not a readable {'.npy array' if suffix == '.npy' else 'TIFF file'} ({error})") from error
    except Exception as error:  # noqa: BLE001 - tifffile raises its own kinds on a damaged file
        raise OSError(f"{name}: not a readable TIFF file ({type(error).__name__}: {error})") from error
    if array.size == 0:  # tifffile logs a damaged file's first page and returns nothing
        raise OSError(f"{name}: not a readable {'.npy array' if suffix == '.npy' else 'TIFF file'} (no values in it)")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or not np.issubdtype(array.dtype, np.number) or min(array.shape[:2]) < 1:
        raise OSError(f"{name}: an array of shape {array.shape} ({array.dtype}); a network's input file holds "
                      "height x width x channels numbers")
    values = array.astype(np.float32)
    if not np.isfinite(values).all():
        raise OSError(f"{name}: holds NaN or infinite values")
    return Planes(values)


def decode(data: bytes, name: str) -> Image.Image | Planes:
    """The file ``name``'s bytes: an image in RGB, or an array's `Planes` (by its suffix); OSError naming it."""
    return decode_planes(data, name) if Path(name).suffix.lower() in PLANE_SUFFIXES else decode_rgb(data, name)


def load(file: ImageFile) -> Image.Image | Planes:
    """One listed file: an image in RGB, or an array's `Planes`; OSError naming it when it cannot be read."""
    try:
        data = file.read_bytes()
    except OSError as error:
        raise OSError(f"{file.root / file.path}: {error}") from error
    return decode(data, str(file.root / file.path))


def read_rgb(path: Path) -> Image.Image:
    """The image at ``path`` in RGB; raises OSError (with the path) when it cannot be read or decoded fully."""
    return load_rgb(ImageFile(path.parent, path.name, None))


def load_rgb(file: ImageFile) -> Image.Image:
    """One listed image (a file or a shard's member) in RGB; OSError naming it when it cannot be."""
    try:
        data = file.read_bytes()
    except OSError as error:
        raise OSError(f"{file.root / file.path}: {error}") from error
    return decode_rgb(data, str(file.root / file.path))


def eval_transform(spec: ModelSpec) -> Callable[[Image.Image | Planes], Tensor]:
    """Resize (to a square of ``spec.eval_resize``, or its short side to it) then centre-crop the input size.

    The framing each model's README measured its accuracy with (``spec.eval_framing``); `Planes` are framed
    alike, as tensors.
    """
    size = (spec.eval_resize, spec.eval_resize) if spec.eval_framing == "square" else spec.eval_resize
    interpolation = v2.InterpolationMode.BICUBIC if spec.eval_interpolation == "bicubic" else v2.InterpolationMode.BILINEAR
    # on PIL images, as the READMEs' figures
    return _Evaluated(v2.Compose([v2.Resize(size, interpolation=interpolation), v2.CenterCrop(spec.input_size)]),
                      spec.channels)


@dataclass(frozen=True)
class _Evaluated:
    """`eval_transform`'s callable: a plain object, so decode workers started afresh can unpickle it."""

    framing: Callable[[object], object]
    channels: int

    def __call__(self, image: Image.Image | Planes) -> Tensor:
        if isinstance(image, Planes):
            return self.framing(checked(image, self.channels).tensor())  # type: ignore[return-value]
        return v2.functional.to_dtype(v2.functional.pil_to_tensor(self.framing(image)), torch.float32, scale=True)


def checked(image: Planes, channels: int) -> Planes:
    """``image`` if it has the network's ``channels``; else OSError (the file is skipped and reported)."""
    if image.channels != channels:
        raise OSError(f"{image.channels} channels where the network reads {channels}")
    return image


@dataclass
class Batch:
    images: Tensor
    #: Positions in the listing of the images in this batch (unreadable ones left out).
    indices: list[int]
    failed: list[str] = field(default_factory=list)


class _Folder(Dataset):
    def __init__(self, files: Sequence[ImageFile], transform: Callable[[Image.Image | Planes], Tensor]) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        file = self.files[index]
        try:
            image = load(file)
        except OSError as error:  # its message names the file
            return index, None, str(error)
        try:
            return index, self.transform(image), None
        except OSError as error:  # a file the network cannot read (its channels)
            return index, None, f"{file.root / file.path}: {error}"


def _collate(items: list[tuple[int, Tensor | None, str | None]]) -> Batch:
    good = [(index, image) for index, image, _ in items if image is not None]
    images = torch.stack([image for _, image in good]) if good else torch.empty(0)
    return Batch(images, [index for index, _ in good], [error for _, _, error in items if error])


def batches(
    files: Sequence[ImageFile],
    transform: Callable[[Image.Image | Planes], Tensor],
    batch_size: int,
    workers: int = 1,
) -> Iterator[Batch]:
    """Decoded, transformed batches in listing order; decoding runs in ``workers`` processes.

    The workers start from a fork server, not as forks of this process: a fork inherits the caller's heap
    (a network, its statistics), and a worker that runs for hours copies those pages one by one as its
    allocator reuses them, until each worker holds as much as the caller.
    """
    loader = DataLoader(
        _Folder(files, transform),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
        multiprocessing_context=_decode_context() if workers else None,
    )
    yield from loader


def _decode_context() -> multiprocessing.context.BaseContext:
    """Fork-server processes with torch and this module already imported, so a worker starts in milliseconds."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "torchvision", "precompute.running.images", "precompute.stages.examples"])
    return context


#: Where this repository's CI and a developer checkout find the default image folder.
SHARED_IMAGES = Path(__file__).resolve().parents[3] / "shared" / "data/imagenet-sample"
#: The default image set (the 1,000 images of ../shared/data/imagenet-sample), pinned file by file.
SAMPLE_CHECKSUMS = "imagenet_sample.sha256"
#: The sample's public originals (full size, 107 MB), pinned file by file, and where they are served.
ORIGINALS_CHECKSUMS = "imagenet_originals.sha256"
ORIGINALS_URL = ("https://raw.githubusercontent.com/EliSchwartz/imagenet-sample-images/"
                 "bc69043e2862758a1906c6a24a792bb28c6bb2ff/")


def locate_images(folder: Path | None, cache: Path | None = None) -> Path:
    """The image folder given, else the shared ImageNet sample beside the checkout, else a download, once,
    each file checked against its pinned sha256: from ``MICROSCOPE_IMAGES_URL`` (a mirror of the shared
    sample), else the sample's public originals (EliSchwartz/imagenet-sample-images at a pinned commit)."""
    from precompute.models.weight_files import Checksums, default_cache, fetch_checked

    if folder is not None:
        return folder
    if SHARED_IMAGES.is_dir():
        return SHARED_IMAGES
    from app.core.settings import Settings

    mirror = Settings.load().images_url
    if mirror:
        return fetch_checked(Checksums.named(SAMPLE_CHECKSUMS), mirror, (cache or default_cache()) / "imagenet-sample",
                             DatasetError)
    return fetch_originals(Checksums.named(ORIGINALS_CHECKSUMS), ORIGINALS_URL,
                           (cache or default_cache()) / "imagenet-sample-originals")


def fetch_originals(checksums: Checksums, base_url: str, folder: Path) -> Path:
    """The originals' flat files (``n01440764_tench.JPEG``) into a class-per-folder layout, so each is labelled."""
    from precompute.models.weight_files import fetch_checked

    try:
        return fetch_checked(checksums, base_url, folder, DatasetError, place=lambda name: f"{name.split('_', 1)[0]}/{name}")
    except DatasetError as error:
        raise DatasetError(f"{error} (no --images given and no ../shared: the default images download from "
                           f"{base_url}; set MICROSCOPE_IMAGES_URL to a mirror of the sample or pass --images DIR)") from error
