"""The vis stage: feature visualizations of many units, batched, resumable, with their recipes.

Each batch renders up to ``batch`` units of one layer with one technique
(one batch element per unit, each with its own objective and seed). A chunk
is written as one transaction after its images are in the blob store, so the
stage can be killed at any moment and run again: what was committed is
skipped (same recipe), nothing is duplicated, and a unit is re-rendered only
when its recipe changes.
"""

from __future__ import annotations

import io
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image
from sqlalchemy import select

from app.core.errors import MicroscopeError
from app.core.store import Artifact, Layer, Model, Store, Unit
from app.core.store.algorithms import ALGORITHMS, is_stale
from app.core.zoo import LayerSpec, ModelSpec
from precompute.running.images import channel_strip
from precompute.models.base import Network
from precompute.optvis import objectives
from precompute.optvis.objectives import Objective
from precompute.optvis.param import PARAMETERIZATIONS
from precompute.optvis.render import LEARNING_RATE, STEPS, Precision, render, resolve_precision
from precompute.optvis.transform import Fit, fit
from precompute.running.recipes import ON_DEMAND, STEM_FIELD, Defaults
from precompute.running.runs import catalogued_model, digested, finish_run, progress_bar, replace_rows, share, start_run, unit_ids
from precompute.running.context import Stage

#: ``pixels`` is the channel objective in the pixel basis: the comparison that motivates the
#: Fourier basis (Olah et al. 2017, "Feature Visualization", preconditioning); every other
#: technique uses the Fourier basis.
TECHNIQUES = ("channel", "neuron", "negative", "diversity", "pixels")
#: Images per unit for the diversity technique, shown as a 2x2 grid with gutters.
DIVERSITY_IMAGES = 4
#: Weight of the diversity penalty, as in Lucid's example ``channel - 1e2 * diversity``.
DIVERSITY_WEIGHT = 100.0
#: White space between the images of a diversity grid, in pixels.
GUTTER = 8
#: Default image side; the network sees it at scale 1 on a canvas 12 px larger (Lucid's
#: transforms), so a 224 px image fills the network's usual field of view.
DEFAULT_SIZE = 224
#: Renders are stored losslessly: lossy WebP's 4:2:0 chroma and quantization cost early units
#: up to 8% of their activation (bench/fidelity.py), so the stored image would no longer be the
#: optimized one. About 30 KB at 128 px, 95 KB at 224 px.
ENCODING = "WebP lossless"




@dataclass(frozen=True)
class VisConfig:
    layers: tuple[LayerSpec, ...]
    units: dict[str, Sequence[int]]
    techniques: tuple[str, ...]
    steps: int = STEPS
    size: int = DEFAULT_SIZE
    batch: int = 32
    seed: int = 0
    learning_rate: float = LEARNING_RATE
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


@dataclass
class VisResult:
    rendered: int = 0
    skipped: int = 0


def unit_seed(seed: int, layer: str, unit: int, technique: str, copy: int = 0) -> int:
    """Each image's own seed: the same unit gets the same start whatever batch it is rendered in."""
    return zlib.crc32(f"{seed}:{layer}:{unit}:{technique}:{copy}".encode())


def parameterization_of(technique: str) -> str:
    return "pixels" if technique == "pixels" else "fourier"


def objective_for(technique: str, layer: LayerSpec, units: Sequence[int], diversity_layer: str,
                  vectors: torch.Tensor | None = None) -> Objective:
    """The objective of ``technique`` for ``units``; a derived layer's units (``vectors``: their directions over
    the base layer) are scored by Lucid's direction objective on the base layer."""
    if layer.is_derived:
        return _direction_objective(technique, layer.inputs[0], vectors)
    if technique in ("channel", "pixels"):
        return objectives.channel(layer.name, list(units))
    if technique == "neuron":
        return objectives.neuron(layer.name, list(units))
    if technique == "negative":  # the most negative pre-ReLU values (the article's negative images)
        return -objectives.channel(layer.name, list(units), relu=False)
    repeated = [unit for unit in units for _ in range(DIVERSITY_IMAGES)]
    return objectives.channel(layer.name, repeated) - DIVERSITY_WEIGHT * objectives.diversity(
        diversity_layer, group=DIVERSITY_IMAGES
    )


def _direction_objective(technique: str, base: str, vectors: torch.Tensor | None) -> Objective:
    if vectors is None:
        raise MicroscopeError(f"a direction over {base} is rendered from its vectors: the network has none")
    if technique in ("channel", "pixels"):
        return objectives.direction(base, vectors)
    if technique == "neuron":
        return objectives.direction(base, vectors, neuron=True)
    if technique == "negative":
        return -objectives.direction(base, vectors)
    repeated = vectors.repeat_interleave(DIVERSITY_IMAGES, dim=0)
    return objectives.direction(base, repeated) - DIVERSITY_WEIGHT * objectives.diversity(base, group=DIVERSITY_IMAGES)


def _activation(technique: str, layer: LayerSpec) -> str:
    if layer.is_derived:
        where = "at the centre position" if technique == "neuron" else "averaged over positions"
        return f"Lucid's direction objective on {layer.inputs[0]} after its ReLU, {where} (the {layer.kind} direction)"
    if layer.kind == "logits":
        return "logit"
    return "pre-ReLU" if technique == "negative" else "ReLU (Lucid's redirected gradient)"


def fitted(spec: ModelSpec, config: VisConfig) -> Fit:
    """The image side and transforms of ``config``'s renders of ``spec``'s network (`fit`)."""
    return fit(spec.input_size, spec.fixed_input, config.size)


def recipe(config: VisConfig, spec: ModelSpec, layer: LayerSpec, technique: str, weights_sha256: str,
           device: torch.device) -> dict:
    """Everything that determines a unit's image; its digest decides whether a stored image is reused."""
    sized = fitted(spec, config)
    params = {
        "algorithm": ALGORITHMS["vis"],
        "technique": technique,
        "layer": layer.name,
        "activation": _activation(technique, layer),
        "parameterization": parameterization_of(technique),
        "decorrelated_color": spec.channels == 3,
        "size": sized.size,
        # The side of the image the network sees: the parameterization at scale 1 plus the pad
        # that the jitters leave (Lucid); no upsampling.
        "canvas": sized.transforms.canvas(sized.size),
        "steps": config.steps,
        "optimizer": "adam",
        "learning_rate": config.learning_rate,
        "transforms": sized.transforms.describe(),
        "objective_reported": "under the transforms' centred view (pad, scale 1)",
        "encoding": ENCODING,
        "seed": config.seed,
        "precision": resolve_precision(config.precision, device),
        "weights_sha256": weights_sha256,
    }
    if sized.note:  # a network sized apart says how its steps were chosen too (the stem's are for every network)
        params["sizing"] = (f"{sized.note}; steps by receptive field: a convolution that sees at most a tenth of the "
                            f"input side ({spec.input_size // STEM_FIELD} px) is a stem layer and takes the early steps, "
                            "every other layer the steps")
    if spec.channels == 1:
        params["channels"] = "1: a gray image (the network reads the luma), no colour decorrelation"
    elif spec.channels != 3:
        params["channels"] = (f"{spec.channels}: each channel in [0, 1] by a sigmoid, no colour decorrelation; shown "
                              "as a false-colour composite above a strip of each channel in gray")
    if layer.factorization:
        params["factorization"] = layer.factorization
    if technique == "diversity":
        params.update(diversity_images=DIVERSITY_IMAGES, diversity_weight=DIVERSITY_WEIGHT,
                      diversity="Lucid: L2-normalized Gram matrices after ReLU, sum over pairs / group size")
    return digested(params)


def pixels_of(images: Tensor) -> np.ndarray:
    """Rendered images (B, C, H, W) in [0, 1] as uint8 RGB (B, H', W', 3): RGB as they are, a multispectral
    network's channels as their false-colour composite above a strip of each channel in gray."""
    values = images.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    if values.shape[3] == 3:
        return (values * 255).round().astype(np.uint8)
    return np.stack([channel_strip(image) for image in values])


def encode_render(images: np.ndarray) -> bytes:
    """One image (1, H, W, 3), or four as a 2x2 grid with white gutters, as WebP."""
    if len(images) == DIVERSITY_IMAGES:
        height, width = images.shape[1:3]
        grid = np.full((2 * height + GUTTER, 2 * width + GUTTER, 3), 255, dtype=np.uint8)
        for number, image in enumerate(images):
            top, left = (number // 2) * (height + GUTTER), (number % 2) * (width + GUTTER)
            grid[top:top + height, left:left + width] = image
        images = grid[None]
    out = io.BytesIO()
    Image.fromarray(images[0]).save(out, "WEBP", lossless=True, method=4)
    return out.getvalue()


@dataclass(frozen=True)
class _Chunk:
    """Units of one layer rendered together with one technique."""

    layer: LayerSpec
    technique: str
    params: dict
    units: list[int]

    @property
    def copies(self) -> int:
        return DIVERSITY_IMAGES if self.technique == "diversity" else 1


def run_vis(stage: Stage, config: VisConfig, poll: Callable[[], None] | None = None) -> VisResult:
    """Render the chosen units; shard i of n takes chunks i, i+n, ... of the full list (stored or not).

    ``poll`` goes to `render` (a worker serves waiting requests there).
    """
    store, spec, net, weights_sha256, device = stage.store, stage.spec, stage.net, stage.weights_sha256, stage.device
    with store.session() as session:
        model_id = catalogued_model(session, spec).id
        ids = unit_ids(session, model_id, [layer.name for layer in config.layers])
        stored = {tuple(row) for row in session.execute(select(Artifact.unit_id, Artifact.technique, Artifact.recipe_sha256))}
    result = VisResult()
    todo = []
    for chunk in share(_chunks(config, spec, weights_sha256, device), stage.shard):
        units = [u for u in chunk.units if (ids[chunk.layer.name, u], chunk.technique, chunk.params["recipe_sha256"]) not in stored]
        result.skipped += len(chunk.units) - len(units)
        if units:
            todo.append(_Chunk(chunk.layer, chunk.technique, chunk.params, units))
    if not todo:
        return result
    for attempt in store.retrying():  # another writer (a worker, or another shard) may hold the lock
        with attempt, store.transaction() as session:
            run = start_run(session, "vis", model_id, {**_describe(config), "device": str(device)},
                            weights_sha256=weights_sha256, seed=config.seed)
    bar = progress_bar(total=sum(len(chunk.units) for chunk in todo), unit="unit", desc="vis", enabled=stage.progress)
    for chunk in todo:
        rows = _render(net, spec, chunk, config, device, poll, store, ids)
        for attempt in store.retrying():
            with attempt, store.transaction() as session:
                replace_rows(session, Artifact, Artifact.unit_id, [row["unit_id"] for row in rows], rows, run,
                             Artifact.technique == chunk.technique)
        result.rendered += len(chunk.units)
        bar.update(len(chunk.units))
    bar.close()
    for attempt in store.retrying():
        with attempt, store.transaction() as session:
            finish_run(session, run)
    return result


def _chunks(config: VisConfig, spec: ModelSpec, weights_sha256: str, device: torch.device) -> list[_Chunk]:
    """Every chunk the config asks for, stored or not, in order (so shards number them alike)."""
    chunks = []
    for layer in config.layers:
        for technique in config.techniques:
            params = recipe(config, spec, layer, technique, weights_sha256, device)
            per_batch = config.batch // DIVERSITY_IMAGES if technique == "diversity" else config.batch
            chosen = list(config.units[layer.name])
            chunks += [_Chunk(layer, technique, params, chosen[start:start + per_batch])
                       for start in range(0, len(chosen), per_batch)]
    return chunks


def _render(net: Network, spec: ModelSpec, chunk: _Chunk, config: VisConfig, device: torch.device,
            poll: Callable[[], None] | None, store: Store, ids: dict) -> list[dict]:  # noqa: ANN001
    """Render a chunk; its images go to the blob store, its rows are returned."""
    layer, technique, units, copies = chunk.layer, chunk.technique, chunk.units, chunk.copies
    seeds = [unit_seed(config.seed, layer.name, unit, technique, copy) for unit in units for copy in range(copies)]
    vectors = net.direction_vectors(layer.name, units) if layer.is_derived else None  # type: ignore[operator]
    sized = fitted(spec, config)
    rendered = render(
        net, objective_for(technique, layer, units, spec.spatial_source(layer).name, vectors),
        PARAMETERIZATIONS[chunk.params["parameterization"]](sized.size, channels=spec.channels), seeds, sized.transforms,
        steps=config.steps, device=device, learning_rate=config.learning_rate, precision=config.precision, poll=poll,
    )
    pixels = pixels_of(rendered.images)
    values = rendered.objective.reshape(len(units), copies).mean(dim=1).tolist()
    keys = [store.blobs.put(encode_render(pixels[i * copies:(i + 1) * copies]), "webp") for i in range(len(units))]
    store.blobs.flush()  # blobs are durable before any row points at them
    return [
        {
            "unit_id": ids[layer.name, unit], "technique": technique, "blob_key": key,
            "recipe_sha256": chunk.params["recipe_sha256"],
            "recipe": {**chunk.params, "unit_seeds": seeds[i * copies:(i + 1) * copies], "batch_units": units},
            "objective": round(value, 4),
        }
        for i, (unit, key, value) in enumerate(zip(units, keys, values))
    ]


def stale_configs(store: Store, spec: ModelSpec) -> list[VisConfig]:
    """Configs that re-render every stored image made by an older algorithm, with its own settings.

    Images are grouped by what their recipes chose (layer, technique, size,
    steps, seed, learning rate, precision), so each group renders exactly as
    a user's ``precompute vis`` would with today's code.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    with store.session() as session:
        rows = session.execute(
            select(Layer.name, Unit.index, Artifact.technique, Artifact.recipe)
            .join(Unit, Artifact.unit_id == Unit.id).join(Layer, Unit.layer_id == Layer.id)
            .join(Model, Layer.model_id == Model.id).where(Model.name == spec.name)
        ).all()
    for layer, unit, technique, params in rows:
        if not is_stale("vis", params) or technique not in TECHNIQUES:
            continue
        key = (layer, technique, params.get("size", DEFAULT_SIZE), params.get("steps", STEPS), params.get("seed", 0),
               params.get("learning_rate", LEARNING_RATE), params.get("precision", "auto"))
        groups[key].append(unit)
    configs = []
    for (layer, technique, size, steps, seed, learning_rate, precision), units in sorted(groups.items()):
        # One config per run of consecutive units keeps each batch's units what a user would choose.
        units = sorted(units)
        start = 0
        for end in range(1, len(units) + 1):
            if end == len(units) or units[end] != units[end - 1] + 1:
                configs.append(VisConfig(
                    layers=(spec.layer(layer),), units={layer: range(units[start], units[end - 1] + 1)},
                    techniques=(technique,), steps=steps, size=size, seed=seed, learning_rate=learning_rate,
                    precision=precision, batch=max(DIVERSITY_IMAGES, 16),
                ))
                start = end
    return configs


def _describe(config: VisConfig) -> dict[str, object]:
    described = asdict(config)
    described["layers"] = [layer.name for layer in config.layers]
    described["units"] = {
        name: [units.start, units.stop] if isinstance(units, range) else list(units)
        for name, units in config.units.items()
    }
    return described


def on_demand_config(layer: LayerSpec, units: Sequence[int], technique: str = "channel",
                     defaults: Defaults = ON_DEMAND, batch: int = 16, *, input_size: int) -> VisConfig:
    """The config a worker renders ``units`` of ``layer`` of a network of ``input_size`` px with (the main job's
    recipe)."""
    return VisConfig(layers=(layer,), units={layer.name: list(units)}, techniques=(technique,),
                     steps=defaults.steps_for(layer, input_size), size=defaults.size, batch=max(batch, DIVERSITY_IMAGES))


def missing_units(store: Store, spec: ModelSpec, layer: LayerSpec, technique: str, recipe_sha256: str) -> list[int]:
    """Units of ``layer`` without an image of ``technique`` made with this recipe, in order."""
    with store.session() as session:
        layer_id = session.scalar(
            select(Layer.id).join(Model, Layer.model_id == Model.id)
            .where(Model.name == spec.name, Layer.name == layer.name)
        )
        done = select(Artifact.unit_id).where(Artifact.technique == technique, Artifact.recipe_sha256 == recipe_sha256)
        return list(session.scalars(
            select(Unit.index).where(Unit.layer_id == layer_id, Unit.id.not_in(done)).order_by(Unit.index)
        ))
