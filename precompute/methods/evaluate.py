"""Classification accuracy: the proof that a weights loader reads the weights right."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from app.core.errors import DatasetError
from app.core.zoo import ModelSpec
from precompute.running.images import batches, eval_transform, list_images
from precompute.models.base import Network


@dataclass(frozen=True)
class Accuracy:
    top1: float
    top5: float
    images: int
    skipped: int
    seconds: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def evaluate(net: Network, spec: ModelSpec, folder: Path, batch_size: int = 50, workers: int = 1) -> Accuracy:
    """Top-1/top-5 accuracy of ``net`` on a class-per-folder image set (folder names are synsets)."""
    files = [image for image in list_images(folder, spec) if image.label is not None]
    if not files:
        raise DatasetError(f"no image under {folder} sits in a folder named after one of {spec.name}'s synsets")
    started = time.perf_counter()
    top1 = top5 = seen = skipped = 0
    with torch.inference_mode():
        for batch in batches(files, eval_transform(spec), batch_size, workers):
            skipped += len(batch.failed)
            if not batch.indices:
                continue
            labels = torch.tensor([files[index].label for index in batch.indices])
            best = net.logits(batch.images.contiguous(memory_format=torch.channels_last)).topk(5, dim=1).indices
            top1 += int((best[:, 0] == labels).sum())
            top5 += int((best == labels[:, None]).any(dim=1).sum())
            seen += len(batch.indices)
    if not seen:
        raise DatasetError(f"none of the {len(files)} images under {folder} could be read")
    return Accuracy(
        top1=round(top1 / seen, 4),
        top5=round(top5 / seen, 4),
        images=seen,
        skipped=skipped,
        seconds=round(time.perf_counter() - started, 2),
    )
