"""The vis stage: feature visualizations of many units, batched, resumable, with their recipes.

Each batch renders up to ``batch`` units of one layer with one technique
(one batch element per unit, each with its own objective and seed). A chunk
is written as one transaction after its images are in the blob store, so the
stage can be killed at any moment and run again: what was committed is
skipped (same recipe), nothing is duplicated, and a unit is re-rendered only
when its recipe changes.
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from sqlalchemy import delete, insert, select
from tqdm import tqdm

from app.errors import MicroscopeError
from app.store import Artifact, Store
from app.zoo import LayerSpec, ModelSpec
from precompute.network import InceptionV1
from precompute.optvis import objectives
from precompute.optvis.objectives import Objective
from precompute.optvis.param import PARAMETERIZATIONS
from precompute.optvis.render import LEARNING_RATE, STEPS, Precision, render, resolve_precision
from precompute.optvis.transform import STANDARD
from precompute.runs import catalogued_model, now, start_run, unit_ids

TECHNIQUES = ("channel", "neuron", "negative", "diversity")
#: Images per unit for the diversity technique, shown as a 2x2 grid.
DIVERSITY_IMAGES = 4
#: Weight of the diversity penalty, as in Lucid's example ``channel - 1e2 * diversity``.
DIVERSITY_WEIGHT = 100.0
#: Default image side. Lucid's tutorials optimize 128 px and upsample to the
#: network's 224; we optimize at 224 so the unit page shows every detail the
#: network saw, at the same cost per step (the network dominates it).
DEFAULT_SIZE = 224
WEBP_QUALITY = 90


@dataclass(frozen=True)
class VisConfig:
    layers: tuple[LayerSpec, ...]
    units: dict[str, range]
    techniques: tuple[str, ...]
    steps: int = STEPS
    size: int = DEFAULT_SIZE
    batch: int = 32
    seed: int = 0
    learning_rate: float = LEARNING_RATE
    parameterization: str = "fourier"
    precision: Precision = "auto"

    def __post_init__(self) -> None:
        unknown = [t for t in self.techniques if t not in TECHNIQUES]
        if unknown:
            raise MicroscopeError(f"unknown technique {unknown[0]!r}: choose from {', '.join(TECHNIQUES)}")
        if self.batch < 1:
            raise MicroscopeError(f"--batch must be at least 1, not {self.batch}")
        if "diversity" in self.techniques and self.batch < DIVERSITY_IMAGES:
            raise MicroscopeError(f"--batch must be at least {DIVERSITY_IMAGES} for the diversity technique")
        if self.steps < 1 or self.size < 16:
            raise MicroscopeError("--steps must be at least 1 and --size at least 16")
        if self.parameterization not in PARAMETERIZATIONS:
            raise MicroscopeError(f"unknown parameterization {self.parameterization!r}")


@dataclass
class VisResult:
    rendered: int = 0
    skipped: int = 0


def unit_seed(seed: int, layer: str, unit: int, technique: str, copy: int = 0) -> int:
    """Each image's own seed: the same unit gets the same start whatever batch it is rendered in."""
    return zlib.crc32(f"{seed}:{layer}:{unit}:{technique}:{copy}".encode())


def objective_for(technique: str, layer: LayerSpec, units: Sequence[int], diversity_layer: str) -> Objective:
    if technique == "channel":
        return objectives.channel(layer.name, list(units))
    if technique == "neuron":
        return objectives.neuron(layer.name, list(units))
    if technique == "negative":
        return -objectives.channel(layer.name, list(units))
    repeated = [unit for unit in units for _ in range(DIVERSITY_IMAGES)]
    return objectives.channel(layer.name, repeated) - DIVERSITY_WEIGHT * objectives.diversity(
        diversity_layer, group=DIVERSITY_IMAGES
    )


def recipe(config: VisConfig, layer: LayerSpec, technique: str, weights_sha256: str, device: torch.device) -> dict:
    """Everything that determines a unit's image; its digest decides whether a stored image is reused."""
    params = {
        "technique": technique,
        "layer": layer.name,
        "activation": "pre-ReLU" if layer.kind != "logits" else "logit",
        "parameterization": config.parameterization,
        "decorrelated_color": True,
        "size": config.size,
        "steps": config.steps,
        "optimizer": "adam",
        "learning_rate": config.learning_rate,
        "transforms": STANDARD.describe(),
        "seed": config.seed,
        "precision": resolve_precision(config.precision, device),
        "weights_sha256": weights_sha256,
    }
    if technique == "diversity":
        params.update(diversity_images=DIVERSITY_IMAGES, diversity_weight=DIVERSITY_WEIGHT)
    params["recipe_sha256"] = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    return params


def _encode(images: np.ndarray) -> bytes:
    """One image (1, H, W, 3), or a 2x2 grid of four, as WebP."""
    if len(images) == DIVERSITY_IMAGES:
        images = np.concatenate([np.concatenate(images[:2], axis=1), np.concatenate(images[2:], axis=1)], axis=0)[None]
    out = io.BytesIO()
    Image.fromarray(images[0]).save(out, "WEBP", quality=WEBP_QUALITY, method=4)
    return out.getvalue()


def run_vis(
    store: Store,
    spec: ModelSpec,
    net: InceptionV1,
    weights_sha256: str,
    config: VisConfig,
    device: torch.device,
    progress: bool = True,
    shard: tuple[int, int] = (0, 1),
) -> VisResult:
    """Render the chosen units; shard i of n takes chunks i, i+n, ... of the full list (stored or not)."""
    result = VisResult()
    with store.session() as session:
        model = catalogued_model(session, spec)
        ids = unit_ids(session, model.id, [layer.name for layer in config.layers])
        stored = {
            (unit_id, technique, digest)
            for unit_id, technique, digest in session.execute(
                select(Artifact.unit_id, Artifact.technique, Artifact.recipe_sha256)
            )
        }
    todo: list[tuple[LayerSpec, str, dict, list[int]]] = []
    index, count = shard
    number = 0
    for layer in config.layers:
        for technique in config.techniques:
            params = recipe(config, layer, technique, weights_sha256, device)
            per_batch = config.batch // DIVERSITY_IMAGES if technique == "diversity" else config.batch
            chosen = list(config.units[layer.name])
            for start in range(0, len(chosen), per_batch):
                number += 1
                if (number - 1) % count != index:
                    continue
                chunk = chosen[start:start + per_batch]
                units = [u for u in chunk if (ids[layer.name, u], technique, params["recipe_sha256"]) not in stored]
                result.skipped += len(chunk) - len(units)
                if units:
                    todo.append((layer, technique, params, units))
    if not todo:
        return result
    with store.transaction() as session:
        run = start_run(session, "vis", model.id, {**_describe(config), "device": str(device)},
                        weights_sha256=weights_sha256, seed=config.seed)
    bar = tqdm(total=sum(len(chunk[3]) for chunk in todo), unit="unit", desc="vis", disable=not progress)
    parameterize = PARAMETERIZATIONS[config.parameterization](config.size)
    for layer, technique, params, units in todo:
        copies = DIVERSITY_IMAGES if technique == "diversity" else 1
        seeds = [unit_seed(config.seed, layer.name, unit, technique, copy) for unit in units for copy in range(copies)]
        diversity_layer = layer.name if layer.kind != "logits" else layer.inputs[0]
        rendered = render(
            net, objective_for(technique, layer, units, diversity_layer), parameterize, seeds, STANDARD,
            steps=config.steps, device=device, learning_rate=config.learning_rate, precision=config.precision,
        )
        pixels = (rendered.images.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        values = rendered.objective.reshape(len(units), copies).mean(dim=1).tolist()
        keys = [store.blobs.put(_encode(pixels[i * copies:(i + 1) * copies]), "webp") for i in range(len(units))]
        store.blobs.flush()
        chunk_ids = [ids[layer.name, unit] for unit in units]
        with store.transaction() as session:
            session.execute(delete(Artifact).where(Artifact.unit_id.in_(chunk_ids), Artifact.technique == technique))
            session.execute(insert(Artifact), [
                {
                    "unit_id": unit_id, "technique": technique, "blob_key": key,
                    "recipe_sha256": params["recipe_sha256"],
                    "recipe": {**params, "unit_seeds": seeds[i * copies:(i + 1) * copies], "batch_units": units},
                    "objective": round(value, 4), "run_id": run.id,
                }
                for i, (unit_id, key, value) in enumerate(zip(chunk_ids, keys, values))
            ])
        result.rendered += len(units)
        bar.update(len(units))
    bar.close()
    with store.transaction() as session:
        session.get(type(run), run.id).finished_at = now()
    return result


def _describe(config: VisConfig) -> dict[str, object]:
    described = asdict(config)
    described["layers"] = [layer.name for layer in config.layers]
    described["units"] = {name: [units.start, units.stop] for name, units in config.units.items()}
    return described
