"""Image folders: listing, labelling and robust, batched loading.

A folder holds JPEG, PNG or WebP files, with or without class subfolders;
where the first folder of a path is a synset of the model's classes, that is
the image's label. Unreadable or truncated files never stop a pass: they are
skipped and reported by path.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from app.errors import DatasetError
from app.zoo import ModelSpec

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})


@dataclass(frozen=True)
class ImageFile:
    root: Path
    #: Path relative to the dataset root, with forward slashes: the image's identity.
    path: str
    label: int | None

    @property
    def full_path(self) -> Path:
        return self.root / self.path


def list_images(root: Path, spec: ModelSpec | None = None) -> list[ImageFile]:
    """Every image under ``root`` in a stable (sorted) order, labelled where the folder is a synset."""
    if not root.is_dir():
        raise DatasetError(f"image folder {root} does not exist")
    synsets = {label.synset: label.index for label in spec.classes} if spec else {}
    files = sorted(
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
    )
    if not files:
        raise DatasetError(f"image folder {root} holds no JPEG, PNG or WebP images")
    return [ImageFile(root, path, synsets.get(path.split("/")[0]) if "/" in path else None) for path in files]


def read_rgb(path: Path) -> Image.Image:
    """The image at ``path`` in RGB; raises OSError (with the path) when it cannot be decoded fully."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise OSError(f"{path}: {error}") from error


def eval_transform(spec: ModelSpec) -> Callable[[Image.Image], Tensor]:
    """Resize to a square of ``spec.eval_resize`` then centre-crop the input size (the README's check)."""
    return v2.Compose(
        [
            v2.Resize((spec.eval_resize, spec.eval_resize)),  # PIL bilinear, as the README's figures
            v2.CenterCrop(spec.input_size),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


@dataclass
class Batch:
    images: Tensor
    #: Positions in the listing of the images in this batch (unreadable ones left out).
    indices: list[int]
    failed: list[str] = field(default_factory=list)


class _Folder(Dataset):
    def __init__(self, files: Sequence[ImageFile], transform: Callable[[Image.Image], Tensor]) -> None:
        self.files, self.transform = files, transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, Tensor | None, str | None]:
        try:
            return index, self.transform(read_rgb(self.files[index].full_path)), None
        except OSError as error:
            return index, None, str(error)


def _collate(items: list[tuple[int, Tensor | None, str | None]]) -> Batch:
    good = [(index, image) for index, image, _ in items if image is not None]
    images = torch.stack([image for _, image in good]) if good else torch.empty(0)
    return Batch(images, [index for index, _ in good], [error for _, _, error in items if error])


def batches(
    files: Sequence[ImageFile],
    transform: Callable[[Image.Image], Tensor],
    batch_size: int,
    workers: int = 1,
) -> Iterator[Batch]:
    """Decoded, transformed batches in listing order; decoding runs in ``workers`` processes."""
    loader = DataLoader(
        _Folder(files, transform),
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_collate,
        persistent_workers=False,
    )
    yield from loader


#: Where this repository's CI and a developer checkout find the default image folder.
SHARED_IMAGES = Path(__file__).resolve().parents[2] / "shared" / "data/imagenet-sample"


def locate_images(folder: Path | None) -> Path:
    """The image folder given, else the shared ImageNet sample beside the checkout."""
    if folder is not None:
        return folder
    if SHARED_IMAGES.is_dir():
        return SHARED_IMAGES
    raise DatasetError("no image folder given: pass --images DIR or set MICROSCOPE_IMAGES")
