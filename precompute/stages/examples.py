"""The examples stage: every unit's top and bottom dataset images, from one streaming pass.

1. The pass: each image's centred square (its short side) is resized to the
   model's input size, with no squashing (`Framing`), and run through the
   network once; `RunningStatistics`
   keeps each unit's top-k and bottom-k on the device. The pass checkpoints
   its state atomically every few batches; killed and run again it resumes
   at the last checkpoint and ends with exactly an uninterrupted pass's
   result (same batches, same order, same arithmetic).
2. The write: each example's receptive-field crop (cut from the original
   image, mapped back from the input grid through the framing; a block
   output's unit has its own branch's field) and a thumbnail of each image go to the
   blob store first; then one transaction replaces the selected units'
   examples and statistics. An interruption before the commit leaves the
   store as it was (at worst a few unreferenced blobs).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image
from sqlalchemy import select
from torch import Tensor
from torchvision.transforms import v2

from app.core.errors import MicroscopeError
from app.core.store import Dataset, DatasetExample, DatasetImage, Store, UnitStats
from app.core.store.algorithms import ALGORITHMS
from app.core.zoo import LayerSpec, ModelSpec
from app.core.zoo.spec import Framing
from precompute.running.images import ImageFile, Planes, batches, checked, decode, list_images
from precompute.models.base import Network
from precompute.methods.ranking import HISTOGRAM_EDGES, RunningStatistics
from precompute.running.runs import catalogued_model, digested, finish_run, finished_recipes, progress_bar, replace_rows, share, start_run
from precompute.running.runs import unit_ids as stored_unit_ids
from precompute.running.context import Stage

THUMBNAIL_SIZE = 320
CROP_SIZE = 128
JPEG_QUALITY = 85
#: Images cut at a time: the workers never run further ahead of the blob store than this.
CUT_WINDOW = 64


@dataclass(frozen=True)
class ExamplesConfig:
    layers: tuple[LayerSpec, ...]
    k: int = 40
    batch_size: int = 32
    workers: int = 1
    checkpoint_every: int = 8

    def __post_init__(self) -> None:
        if self.k < 1:
            raise MicroscopeError(f"-k must be at least 1, not {self.k}")
        if self.batch_size < 1:
            raise MicroscopeError(f"--batch must be at least 1, not {self.batch_size}")
        if not self.layers:
            raise MicroscopeError("no layers selected")


@dataclass
class ExamplesResult:
    images: int
    skipped: list[str] = field(default_factory=list)
    examples: int = 0
    reused: bool = False
    #: A shard that finished its images but left the writing to the last shard.
    waiting: bool = False
    messages: list[str] = field(default_factory=list)


def fingerprint(files: Sequence[ImageFile]) -> str:
    """The same relative paths with the same sizes give the same digest, wherever the root is."""
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.path}\0{file.size}\n".encode())
    return digest.hexdigest()


#: How a 1-channel network's example crops are shown (its recipe says so; the images' thumbnails stay as the files are).
GRAY_CROPS = "gray: the luma the network reads (ITU-R 601-2, as PIL's convert(\"L\"))"
#: What the pages say of the examples' preprocessing (stored in the recipe).
PREPROCESSING = "centre square of the short side, resized to {size}x{size} (bilinear); no squashing"


def input_transform(spec: ModelSpec) -> Callable[[Image.Image | Planes], Tensor]:
    """The image's centred square resized to the input size; tiny images are scaled up, long ones cropped."""
    return _CentredSquare(spec.input_size, spec.channels)


@dataclass(frozen=True)
class _CentredSquare:
    """`input_transform`'s callable: a plain object, so decode workers started afresh can unpickle it."""

    size: int
    channels: int = 3

    def __call__(self, image: Image.Image | Planes) -> Tensor:
        framing = Framing.of(image.width, image.height)
        square = image.crop((framing.left, framing.top, framing.left + framing.side, framing.top + framing.side))
        resized = square.resize((self.size, self.size), Image.Resampling.BILINEAR)
        if isinstance(resized, Planes):
            return checked(resized, self.channels).tensor()
        return v2.functional.to_dtype(v2.functional.pil_to_tensor(resized), torch.float32, scale=True)


def _recipe(spec: ModelSpec, weights: str, dataset: str, config: ExamplesConfig) -> dict[str, object]:
    return digested({
        "algorithm": ALGORITHMS["examples"],
        "model": spec.name,
        "weights_sha256": weights,
        "dataset_fingerprint": dataset,
        "layers": [layer.name for layer in config.layers],
        **({"factorizations": {layer.name: layer.factorization for layer in config.layers if layer.factorization}}
           if any(layer.factorization for layer in config.layers) else {}),
        "k": config.k,
        "input": PREPROCESSING.format(size=spec.input_size),
        "batch_size": config.batch_size,
        "histogram_edges": list(HISTOGRAM_EDGES),
        **({"crops": GRAY_CROPS} if spec.channels == 1 else {}),
    })


def run_examples(stage: Stage, root: Path, config: ExamplesConfig) -> ExamplesResult:
    """One pass over the images under ``root``; shard i of n takes batches i, i+n, ... and the last shard
    to finish merges and writes."""
    store, spec, shard = stage.store, stage.spec, stage.shard
    plan = _plan(store, spec, stage.weights_sha256, root, config, shard)
    if plan.result.reused:
        return plan.result
    statistics, skipped = _stream(stage.net, spec, plan, shard, config, stage.device, stage.progress)
    if shard[1] > 1:
        # Each shard's result is exact for its images, and the top-k of the union is the top-k of the
        # shards' top-k lists, so merging loses nothing.
        waiting = plan.partials.wait_or_lock()
        if waiting:
            plan.result.messages.append(waiting)
            plan.result.waiting = True
            return plan.result
        saved = [torch.load(path, map_location=stage.device, weights_only=True) for path in plan.partials.all]
        statistics, skipped = _merge(spec, config, stage.device, saved)
    return _finish(store, spec, plan, statistics, skipped, config, stage.progress)


def examples_part(stage: Stage, root: Path, config: ExamplesConfig) -> bytes | None:
    """Shard i of n's pass, returned instead of merged through a shared folder (a cluster's task): its exact
    statistics and unreadable files, serialized; None when the recipe is already stored."""
    plan = _plan(stage.store, stage.spec, stage.weights_sha256, root, config, stage.shard)
    if plan.result.reused:
        return None
    statistics, skipped = _stream(stage.net, stage.spec, plan, stage.shard, config, stage.device, stage.progress)
    out = io.BytesIO()
    torch.save({"statistics": statistics.state_dict(), "skipped": skipped}, out)
    return out.getvalue()


def write_examples(stage: Stage, root: Path, config: ExamplesConfig, parts: Sequence[bytes | None]) -> ExamplesResult:
    """Every shard's part (from `examples_part`) merged, exactly, and written as one pass would be."""
    plan = _plan(stage.store, stage.spec, stage.weights_sha256, root, config, (0, len(parts)))
    if plan.result.reused or any(part is None for part in parts):
        plan.result.reused = True
        return plan.result
    saved = [torch.load(io.BytesIO(part), map_location=stage.device, weights_only=True) for part in parts if part]
    statistics, skipped = _merge(stage.spec, config, stage.device, saved)
    return _finish(stage.store, stage.spec, plan, statistics, skipped, config, stage.progress)


@dataclass
class _Plan:
    files: list[ImageFile]
    root: Path
    recipe: dict[str, object]
    model_id: int
    result: ExamplesResult
    partials: _Partials


def _plan(store: Store, spec: ModelSpec, weights_sha256: str, root: Path, config: ExamplesConfig,
          shard: tuple[int, int]) -> _Plan:
    """The images, the recipe and what the store already holds of it."""
    files = list_images(root, spec)
    recipe = _recipe(spec, weights_sha256, fingerprint(files), config)
    result = ExamplesResult(images=len(files))
    with store.session() as session:
        model_id = catalogued_model(session, spec).id
        result.messages += _moved(session, root.resolve(), str(recipe["dataset_fingerprint"]))
        result.reused = recipe["recipe_sha256"] in finished_recipes(session, "examples")
    partials = _Partials(store.settings.data_dir / "checkpoints", f"examples-{recipe['recipe_sha256'][:16]}", shard)
    return _Plan(files, root.resolve(), recipe, model_id, result, partials)


def _finish(store: Store, spec: ModelSpec, plan: _Plan, statistics: RunningStatistics, skipped: list[str],
            config: ExamplesConfig, progress: bool) -> ExamplesResult:
    plan.result.skipped = skipped
    plan.result.examples = _write(store, spec, plan.model_id, plan.files, plan.root, statistics, plan.recipe, config,
                                  progress, plan.result.skipped)
    plan.partials.remove()
    return plan.result


def _mine(count: int, batch_size: int, shard: tuple[int, int]) -> list[int]:
    """Shard i of n's images: batches i, i+n, ... of one process's batches, so that every image is run in
    the very batch it is run in alone, and its activations (which can differ in the last bits with the
    batch's make-up) are the same bits: the merged top-k equals one process's."""
    batches = [range(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    return [image for batch in share(batches, shard) for image in batch]


def _moved(session, root: Path, fingerprint: str) -> list[str]:  # noqa: ANN001
    """What to tell the user when a dataset of the same name was read from another folder."""
    dataset = session.scalar(select(Dataset).where(Dataset.name == root.name))
    if dataset is None or dataset.root == str(root):
        return []
    if dataset.fingerprint == fingerprint:
        return [f"dataset {root.name!r} moved from {dataset.root} to {root}: same files"]
    return [f"dataset {root.name!r} was read from {dataset.root}; {root} holds other files: "
            "the old results are kept for the units not recomputed"]


@dataclass(frozen=True)
class _Partials:
    """The shards' checkpoints of one recipe's pass, and the lock the shard that writes the store holds."""

    folder: Path
    prefix: str
    shard: tuple[int, int]

    @property
    def checkpoint(self) -> Path:
        return self.folder / f"{self.prefix}-{self.shard[0]}of{self.shard[1]}.pt"

    @property
    def all(self) -> list[Path]:
        return [self.folder / f"{self.prefix}-{i}of{self.shard[1]}.pt" for i in range(self.shard[1])]

    @property
    def lock(self) -> Path:
        return self.folder / f"{self.prefix}.merge-lock"

    def wait_or_lock(self) -> str | None:
        """None when this shard should merge and write (it holds the lock); otherwise why it leaves."""
        index, count = self.shard
        if not all(_complete(path) for path in self.all):
            return f"shard {index}/{count} done; the last shard to finish writes the store"
        if not _acquire(self.lock):
            return f"shard {index}/{count} done; another shard is writing the store"
        return None

    def remove(self) -> None:
        for path in self.all:
            path.unlink(missing_ok=True)
        if self.shard[1] > 1:
            self.lock.unlink(missing_ok=True)


def _complete(path: Path) -> bool:
    return path.is_file() and bool(torch.load(path, map_location="cpu", weights_only=True)["complete"])


def _acquire(lock: Path) -> bool:
    """Create ``lock`` exclusively; a lock left by a process that died on this host is taken over."""
    for _ in range(2):
        try:
            descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                owner = int(lock.read_text() or 0)
                os.kill(owner, 0)
                return False
            except (ValueError, ProcessLookupError):
                lock.unlink(missing_ok=True)
                continue
            except PermissionError:
                return False
        with os.fdopen(descriptor, "w") as handle:
            handle.write(str(os.getpid()))
        return True
    return False


def _merge(spec: ModelSpec, config: ExamplesConfig, device: torch.device, saved: list[dict]) -> tuple[RunningStatistics, list[str]]:
    """The shards' saved statistics (checkpoints or parts) merged into one pass's."""
    merged = RunningStatistics(spec, config.layers, config.k, device)
    skipped: list[str] = []
    for state in saved:
        part = RunningStatistics(spec, config.layers, config.k, device)
        part.load_state_dict(state["statistics"])
        merged.merge(part)
        skipped.extend(state["skipped"])
    return merged, skipped


def _stream(
    net: Network,
    spec: ModelSpec,
    plan: _Plan,
    shard: tuple[int, int],
    config: ExamplesConfig,
    device: torch.device,
    progress: bool,
) -> tuple[RunningStatistics, list[str]]:
    """The pass over shard i of n's images, resumed from its checkpoint if there is one."""
    files, checkpoint = plan.files, plan.partials.checkpoint
    mine = _mine(len(files), config.batch_size, shard)
    statistics = RunningStatistics(spec, config.layers, config.k, device)
    start, skipped = 0, []
    if checkpoint.is_file():
        saved = torch.load(checkpoint, map_location=device, weights_only=True)
        statistics.load_state_dict(saved["statistics"])
        start, skipped = saved["next_image"], list(saved["skipped"])
    remaining = [files[i] for i in mine[start:]]
    total_batches = (len(remaining) + config.batch_size - 1) // config.batch_size
    bar = progress_bar(total=len(mine), initial=start, unit="img", desc="examples", enabled=progress)
    with torch.inference_mode():
        for number, batch in enumerate(batches(remaining, input_transform(spec), config.batch_size, config.workers), 1):
            skipped.extend(batch.failed)
            if batch.indices:
                images = batch.images.to(device).contiguous(memory_format=torch.channels_last)
                statistics.observe(net, images, torch.tensor([mine[start + i] for i in batch.indices]))
            bar.update(len(batch.indices) + len(batch.failed))
            if number % config.checkpoint_every == 0 or number == total_batches:
                done = start + min(number * config.batch_size, len(remaining))
                _save_checkpoint(checkpoint, statistics, done, skipped, complete=done == len(mine))
    bar.close()
    if total_batches == 0 and not checkpoint.is_file():
        _save_checkpoint(checkpoint, statistics, 0, skipped, complete=True)
    return statistics, skipped


def _save_checkpoint(path: Path, statistics: RunningStatistics, next_image: int, skipped: list[str], complete: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"statistics": statistics.state_dict(), "next_image": next_image, "skipped": skipped, "complete": complete}
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=".tmp-", delete=False) as handle:
        torch.save(state, handle)
    os.replace(handle.name, path)


@dataclass(frozen=True)
class _ImageBlobs:
    sha256: str
    width: int
    height: int
    thumbnail: bytes
    crops: dict[tuple[int, int, int, int], bytes]


def _encode(image: Image.Image, size: int) -> bytes:
    image = image.copy()
    image.thumbnail((size, size), Image.Resampling.BICUBIC)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=JPEG_QUALITY)
    return out.getvalue()


def _cut(job: tuple[ImageFile, int, list[tuple[int, int, int, int]], bool]) -> _ImageBlobs | str:
    """Thumbnail and crops of one original image (boxes in the square input grid; gray ones for a 1-channel
    network, which sees the luma), or why it failed.

    An image that became unreadable since the pass loses its examples; it never stops the run.
    """
    file, input_size, boxes, gray = job
    try:
        data = file.read_bytes()
        image = decode(data, str(file.root / file.path))
    except OSError as error:
        return str(error)
    # An array is shown as its false-colour composite, stretched over the whole image (`Planes.display`).
    image = image.display() if isinstance(image, Planes) else image
    framing = Framing.of(image.width, image.height)
    seen = image.convert("L") if gray else image
    crops = {box: _encode(seen.crop(framing.to_original(box, input_size)), CROP_SIZE) for box in boxes}
    return _ImageBlobs(hashlib.sha256(data).hexdigest(), image.width, image.height, _encode(image, THUMBNAIL_SIZE), crops)


#: One example: (layer, unit, kind, rank, image, y, x, activation).
_Example = tuple[LayerSpec, int, str, int, int, int, int, float]
_Box = tuple[int, int, int, int]


def _write(
    store: Store,
    spec: ModelSpec,
    model_id: int,
    files: Sequence[ImageFile],
    root: Path,
    statistics: RunningStatistics,
    recipe: dict[str, object],
    config: ExamplesConfig,
    progress: bool,
    failed: list[str],
) -> int:
    """Crops and thumbnails to the blob store, then the selected units' examples and statistics replaced
    in one transaction; the number of examples written."""
    examples, boxes = _examples(spec, statistics, config.layers)
    thumbnails, crop_keys = _cut_all(store, files, spec, boxes, config.workers, progress, failed)
    for attempt in store.retrying():  # another writer (a worker) may hold the lock
        with attempt, store.transaction() as session:
            dataset = _dataset_row(session, root, str(recipe["dataset_fingerprint"]), len(files))
            image_ids = _image_rows(session, dataset.id, files, thumbnails)
            run = start_run(session, "examples", model_id, recipe, weights_sha256=str(recipe["weights_sha256"]))
            unit_ids = stored_unit_ids(session, model_id, [layer.name for layer in config.layers])
            rows = [
                {
                    "unit_id": unit_ids[layer.name, unit], "kind": kind, "rank": rank, "image_id": image_ids[image],
                    "activation": round(value, 5), "y": y, "x": x,
                    "crop_key": crop_keys[image, spec.field_layer(layer, unit).position_box(y, x, spec.input_size)],
                }
                for layer, unit, kind, rank, image, y, x, value in examples
                if image in thumbnails
            ]
            selected = list(unit_ids.values())
            replace_rows(session, DatasetExample, DatasetExample.unit_id, selected, rows, run)
            replace_rows(session, UnitStats, UnitStats.unit_id, selected, _stats_rows(statistics, unit_ids, dataset.id), run)
            finish_run(session, run)
    return len(rows)


def _examples(spec: ModelSpec, statistics: RunningStatistics, layers: Sequence[LayerSpec]) -> tuple[list[_Example], dict[int, set[_Box]]]:
    """Every example on the host, and the input boxes to crop from each image."""
    examples: list[_Example] = []
    boxes: dict[int, set[_Box]] = defaultdict(set)
    for layer in layers:
        stats = statistics.statistics(layer)
        for kind, ranking, sign in (("top", stats.top, 1.0), ("bottom", stats.bottom, -1.0)):
            if kind == "bottom" and layer.is_derived:
                continue  # a direction is read through a ReLU (NMF codes are never negative): no negative examples
            values, images, positions = (t.cpu().tolist() for t in (ranking.values, ranking.images, ranking.positions))
            for unit in range(layer.channels):
                for rank, (value, image, position) in enumerate(zip(values[unit], images[unit], positions[unit])):
                    if image < 0:
                        break
                    y, x = divmod(position, layer.size)
                    examples.append((layer, unit, kind, rank, image, y, x, sign * value))
                    boxes[image].add(spec.field_layer(layer, unit).position_box(y, x, spec.input_size))
    return examples, boxes


def _cut_all(
    store: Store, files: Sequence[ImageFile], spec: ModelSpec, boxes: dict[int, set[_Box]], workers: int,
    progress: bool, failed: list[str],
) -> tuple[dict[int, tuple[_ImageBlobs, str]], dict[tuple[int, _Box], str]]:
    """Thumbnails and crops of every image with examples, cut in worker processes, in the blob store."""
    jobs = [(files[image], spec.input_size, sorted(found), spec.channels == 1) for image, found in sorted(boxes.items())]
    thumbnails: dict[int, tuple[_ImageBlobs, str]] = {}
    crop_keys: dict[tuple[int, _Box], str] = {}
    with ProcessPoolExecutor(max_workers=max(1, workers)) as pool:
        cut = (blobs for start in range(0, len(jobs), CUT_WINDOW)
               for blobs in pool.map(_cut, jobs[start:start + CUT_WINDOW], chunksize=4))
        for image, blobs in progress_bar(zip(sorted(boxes), cut), total=len(jobs), desc="crops", unit="img", enabled=progress):
            if isinstance(blobs, str):
                failed.append(blobs)
                continue
            for box, data in blobs.crops.items():
                crop_keys[image, box] = store.blobs.put(data, "jpg")
            # Only the image's row data stays in memory, not its encoded crops and thumbnail.
            thumbnails[image] = (replace(blobs, thumbnail=b"", crops={}), store.blobs.put(blobs.thumbnail, "jpg"))
    store.blobs.flush()  # blobs are durable before any row points at them
    return thumbnails, crop_keys


def _dataset_row(session, root: Path, fingerprint: str, images: int) -> Dataset:  # noqa: ANN001
    dataset = session.scalar(select(Dataset).where(Dataset.name == root.name))
    if dataset is None:
        dataset = Dataset(name=root.name, root=str(root), fingerprint="", images=0)
        session.add(dataset)
    dataset.root, dataset.fingerprint, dataset.images = str(root), fingerprint, images
    session.flush()
    return dataset


def _image_rows(session, dataset_id: int, files: Sequence[ImageFile], thumbnails: dict) -> dict[int, int]:  # noqa: ANN001
    existing = dict(session.execute(select(DatasetImage.path, DatasetImage.id).where(DatasetImage.dataset_id == dataset_id)).all())
    ids: dict[int, int] = {}
    for image, (blobs, key) in thumbnails.items():
        path = files[image].path
        if path in existing:
            row = session.get(DatasetImage, existing[path])
            row.sha256, row.width, row.height, row.thumbnail_key = blobs.sha256, blobs.width, blobs.height, key
        else:
            row = DatasetImage(dataset_id=dataset_id, path=path, sha256=blobs.sha256, width=blobs.width,
                               height=blobs.height, thumbnail_key=key)
            session.add(row)
            session.flush()
        ids[image] = row.id
    return ids


def _stats_rows(statistics: RunningStatistics, unit_ids: dict, dataset_id: int) -> list[dict]:  # noqa: ANN001
    seen = max(statistics.images_seen, 1)
    rows = []
    for layer in statistics.layers:
        stats = statistics.statistics(layer)
        histogram, mean, active = stats.histogram.cpu().tolist(), (stats.max_sum / seen).cpu().tolist(), stats.active.cpu().tolist()
        for unit in range(layer.channels):
            rows.append({
                "unit_id": unit_ids[layer.name, unit], "dataset_id": dataset_id, "images": statistics.images_seen,
                "mean_max": round(mean[unit], 5), "active_fraction": round(active[unit] / seen, 5),
                "histogram": histogram[unit],
            })
    return rows

