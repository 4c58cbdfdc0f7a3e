"""The tuning stage: every unit's responses to parametric stimuli and to its top examples rotated.

For each layer, every stimulus of every family in `app.core.stimuli` is drawn on
the layer's canvas, centred on the receptive field of one position, and the
whole layer is read there in one forward pass (all units at once, no
gradients): a unit's response is its pre-ReLU activation at that position,
the largest over the position and its 8 neighbours (so a one-pixel offset
does not decide). Joint tuning ("Zoom In"): each unit's top dataset examples
are cut around the receptive field they fired in, masked by the same
aperture, rotated about its centre every 15 degrees and read the same way.

One run per layer, recipe-digested (families, placement, weights, the
examples runs joint tuning read), so a rerun skips what is current and new
weights or examples recompute the layer. The figures are computed on the
rectified responses (what the next layer sees).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from sqlalchemy import select
from torch import Tensor
from torchvision.transforms import v2

from app.core.contracts import FAMILY_UNITS
from app.core.errors import MicroscopeError
from app.core.store import Dataset, DatasetExample, DatasetImage, Run, Store, UnitTuning
from app.core.stimuli import (CONVENTIONS, FAMILIES, FAMILY_JOINT, GREY, JOINT, ROTATIONS, TUNING_FAMILIES, Family, Placement,
                         draw)
from app.core.zoo import LayerSpec, ModelSpec
from app.core.zoo.skips import require
from app.core.store.algorithms import ALGORITHMS
from precompute.stages.examples import input_transform
from precompute.running.images import ImageFile, list_images, load_rgb
from precompute.running.runs import catalogued_model, digested, finish_run, finished_recipes, progress_bar, replace_rows, share, start_run, unit_ids
from precompute.running.context import Stage

ALL_FAMILIES = TUNING_FAMILIES


@dataclass(frozen=True)
class TuningConfig:
    layers: tuple[LayerSpec, ...]
    families: tuple[str, ...] = ALL_FAMILIES
    #: Stimuli per forward pass.
    batch: int = 64
    #: Top examples rotated per unit (their responses averaged).
    joint_examples: int = 3
    #: The image folder the examples were computed on (joint tuning reads its top examples there; None: the
    #: store's latest examples dataset).
    images: str | None = None
    #: Joint tuning also where the canvas is the whole input (the receptive field with its margin does not fit
    #: inside it): there the crop is most of the photo, at 24 full forward passes per unit.
    joint_everywhere: bool = False


@dataclass
class TuningResult:
    layers_tuned: int = 0
    layers_reused: int = 0
    units: int = 0
    #: Seconds each tuned layer took.
    seconds: dict[str, float] = field(default_factory=dict)
    #: Why joint tuning was left out, if it was.
    notes: list[str] = field(default_factory=list)

    @classmethod
    def total(cls, results: Sequence[TuningResult]) -> TuningResult:
        return cls(sum(r.layers_tuned for r in results), sum(r.layers_reused for r in results),
                   sum(r.units for r in results), {k: v for r in results for k, v in r.seconds.items()},
                   sorted({note for r in results for note in r.notes}))


def tuning_recipe(spec: ModelSpec, layer: LayerSpec, config: TuningConfig, weights_sha256: str,
                  examples: list[str]) -> dict:
    families = [name for name in config.families if name != JOINT]
    params: dict = {
        "algorithm": ALGORITHMS["tuning"], "layer": layer.name, "weights_sha256": weights_sha256,
        "input_size": spec.input_size,
        # Where each run of units' stimuli are drawn (a block output's units have their branch's field).
        "placements": [{"units": [part.units.start, part.units.stop], **part.placement.describe()}
                       for part in field_groups(spec, layer)],
        "families": [FAMILIES[name].describe() for name in families],
        "response": "pre-ReLU activation at the placement's position, largest over it and its 8 neighbours; "
                    "figures on the rectified responses",
        "conventions": CONVENTIONS,
    }
    if layer.factorization:
        params["factorization"] = layer.factorization
    # The drive (each family's peak over the top example's activation) reads the examples too.
    params["examples_recipes"] = sorted(examples)
    if JOINT in config.families:
        params["joint"] = {"rotations": list(ROTATIONS), "examples": config.joint_examples,
                           "family": f"{FAMILY_JOINT}: the {FAMILY_UNITS} most curve-selective units' responses to "
                                     "rotations of the most selective one's top examples, read at its position"}
    return digested(params)


def placement(spec: ModelSpec, layer: LayerSpec) -> Placement:
    return Placement.of(layer.receptive_field, layer.stride, layer.offset, spec.input_size)


@dataclass(frozen=True)
class FieldGroup:
    """A run of a layer's units that share a receptive field: a block output's branch, else the whole layer."""

    units: range
    #: The layer whose geometry those units have (the branch, for a block output's units).
    geometry: LayerSpec
    placement: Placement


def field_groups(spec: ModelSpec, layer: LayerSpec) -> list[FieldGroup]:
    """The layer's units by the receptive field they have, in unit order (a mixed layer's unit has its branch's,
    as its dataset examples do)."""
    branches = [spec.layer(name) for name in layer.inputs] if layer.kind == "mixed" else []
    if not branches or sum(b.channels for b in branches) != layer.channels or any(
            (b.stride, b.offset) != (layer.stride, layer.offset) for b in branches):
        return [FieldGroup(range(layer.channels), layer, placement(spec, layer))]
    groups, start = [], 0
    for branch in branches:
        groups.append(FieldGroup(range(start, start + branch.channels), branch, placement(spec, branch)))
        start += branch.channels
    return groups


def run_tuning(stage: Stage, config: TuningConfig, poll: Callable[[], None] | None = None) -> TuningResult:
    """Tune every unit of ``config.layers`` (shard i of n: layers i, i+n, ...); ``poll`` is called between
    forward passes (a worker serves waiting requests there)."""
    unknown = [name for name in config.families if name not in ALL_FAMILIES]
    if unknown:
        raise MicroscopeError(f"unknown tuning families {unknown}: choose from {', '.join(ALL_FAMILIES)}")
    store, spec = stage.store, stage.spec
    require(spec, "tuning")
    with store.session() as session:
        model_id = catalogued_model(session, spec).id
        done = finished_recipes(session, "tuning")
        dataset = _dataset(session, config.images)
    result = TuningResult()
    if dataset is None:
        result.notes.append("no examples of these images in the store: joint tuning left out, and no drive "
                            "(run `microscope precompute examples` first, or pass --images)")
    files = _images(dataset, result)
    wide: list[str] = []
    for layer in progress_bar(share(config.layers, stage.shard), desc="tuning", unit="layer", enabled=stage.progress):
        started = time.monotonic()
        mine = replace(config, families=_families(spec, layer, config, bool(files)))
        if JOINT in config.families and JOINT not in mine.families and files:
            wide.append(layer.name)
        with store.session() as session:
            ids = unit_ids(session, model_id, [layer.name])
            examples = _top_examples(session, list(ids.values()), dataset.id, config.joint_examples) if dataset else None
        recipe = tuning_recipe(spec, layer, mine, stage.weights_sha256, sorted(examples.recipes) if examples else [])
        if recipe["recipe_sha256"] in done:
            result.layers_reused += 1
            continue
        rows = _tune_layer(stage, layer, mine, ids, examples, files, poll)
        _write(store, model_id, recipe, rows, list(ids.values()))
        result.layers_tuned += 1
        result.units += layer.channels
        result.seconds[layer.name] = round(time.monotonic() - started, 2)
    if wide:
        result.notes.append(f"joint tuning left out of {', '.join(wide)}: their receptive fields fill the input "
                            "(--joint-everywhere computes it there too)")
    return result


def _images(dataset: Dataset | None, result: TuningResult) -> dict[str, ImageFile]:
    """The examples' images by path (joint tuning cuts them); none, with a note, where the folder is gone."""
    if dataset is None:
        return {}
    try:
        return {file.path: file for file in list_images(Path(dataset.root))}
    except (MicroscopeError, OSError) as error:
        result.notes.append(f"joint tuning left out: the examples' images cannot be read ({error})")
        return {}


def _families(spec: ModelSpec, layer: LayerSpec, config: TuningConfig, examples: bool) -> tuple[str, ...]:
    """The families this layer gets: joint tuning needs examples, and (unless ``joint_everywhere``) a receptive
    field that fits inside the input with its margin."""
    joint = examples and (config.joint_everywhere or placement(spec, layer).canvas < spec.input_size)
    return tuple(name for name in config.families if name != JOINT or joint)


# Responses ---------------------------------------------------------------------------------------


def _read(net: torch.nn.Module, layer: LayerSpec, images: Tensor, position: int) -> Tensor:
    """Every unit's response to each image: (images, units), the largest over the position's 3x3 neighbourhood."""
    activation = net(images, (layer.name,))[layer.name]
    if activation.dim() == 2:
        return activation
    low, high = max(0, position - 1), position + 2
    return activation[:, :, low:high, low:high].amax(dim=(2, 3))


@torch.no_grad()
def responses(net: torch.nn.Module, spec: ModelSpec, layer: LayerSpec, family: Family, device: torch.device,
              batch: int = 64, poll: Callable[[], None] | None = None) -> np.ndarray:
    """The layer's responses to ``family``: shape ``family.shape + (units,)``, pooled axes reduced by their largest;
    each unit's to the stimuli drawn on its own receptive field (`field_groups`: a pass per distinct field)."""
    values = None
    done: dict[Placement, np.ndarray] = {}
    for group in field_groups(spec, layer):
        if group.placement not in done:
            done[group.placement] = _responses(net, layer, family, group.placement, device, batch, poll)
        drawn = done[group.placement]
        if values is None:
            values = np.empty_like(drawn)
        values[..., group.units.start:group.units.stop] = drawn[..., group.units.start:group.units.stop]
    return values


def _responses(net: torch.nn.Module, layer: LayerSpec, family: Family, where: Placement, device: torch.device,
               batch: int, poll: Callable[[], None] | None) -> np.ndarray:
    params = family.params()
    out = []
    for start in range(0, len(params), batch):
        pixels = draw(family, params[start:start + batch], where)
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).to(device)
        out.append(_read(net, layer, images, where.position).float().cpu())
        if poll is not None:
            with torch.enable_grad():  # a request served here may render (optimize an image)
                poll()
    values = torch.cat(out).numpy()
    pooled = len(family.pooled.values) if family.pooled else 1
    values = values.reshape(*family.shape, pooled, -1).max(axis=-2)
    return values


@dataclass
class _Examples:
    #: Each unit's top examples as (image path, y, x), by unit id.
    by_unit: dict[int, list[tuple[str, int, int]]]
    #: The unit's largest activation over the dataset (its top example's), by unit id.
    top: dict[int, float]
    recipes: set[str]


def _dataset(session, images: str | None) -> Dataset | None:  # noqa: ANN001
    """The examples' dataset at ``images``, or the latest one the store holds."""
    if images is None:
        return session.scalars(select(Dataset).order_by(Dataset.id.desc())).first()
    return session.scalar(select(Dataset).where(Dataset.root == str(Path(images).resolve())))


def _top_examples(session, units: list[int], dataset_id: int, count: int) -> _Examples:  # noqa: ANN001
    query = (select(DatasetExample.unit_id, DatasetImage.path, DatasetExample.y, DatasetExample.x,
                    DatasetExample.activation, DatasetExample.rank, DatasetExample.run_id)
             .join(DatasetImage, DatasetExample.image_id == DatasetImage.id)
             .where(DatasetExample.unit_id.in_(units), DatasetExample.kind == "top", DatasetExample.rank < count,
                    DatasetImage.dataset_id == dataset_id)
             .order_by(DatasetExample.unit_id, DatasetExample.rank))
    found = _Examples({}, {}, set())
    runs = set()
    for unit_id, path, y, x, activation, rank, run_id in session.execute(query):
        found.by_unit.setdefault(unit_id, []).append((path, y, x))
        if rank == 0:
            found.top[unit_id] = activation
        runs.add(run_id)
    found.recipes = {str(p.get("recipe_sha256")) for p in session.scalars(select(Run.params).where(Run.id.in_(runs)))}
    return found


def rotated_crops(image: Tensor, layer: LayerSpec, where: Placement, y: int, x: int,
                  angles: Sequence[float] = ROTATIONS) -> Tensor:
    """The receptive field of position (y, x) of ``image`` (3, size, size), masked by the stimuli's aperture and
    rotated counterclockwise about its centre by each angle, each on a grey canvas where the stimuli go."""
    half = math.ceil(where.field / 2)
    side = 2 * half + 1  # odd: the centre pixel is the receptive field's
    cy, cx = layer.offset + y * layer.stride, layer.offset + x * layer.stride
    size = image.shape[-1]
    patch = torch.full((3, side, side), GREY)
    top, left = cy - half, cx - half
    src = image[:, max(0, top):min(size, top + side), max(0, left):min(size, left + side)]
    patch[:, max(0, -top):max(0, -top) + src.shape[1], max(0, -left):max(0, -left) + src.shape[2]] = src
    grid = torch.arange(side, dtype=torch.float32) - half
    aperture = (where.field / 2 - torch.hypot(grid[:, None], grid[None, :]) + 0.5).clamp(0, 1)
    patch = GREY + (patch - GREY) * aperture
    canvas = torch.full((len(angles), 3, where.canvas, where.canvas), GREY)
    at = int(where.centre) - half
    lo, hi = max(0, -at), min(side, where.canvas - at)
    for index, angle in enumerate(angles):
        turned = v2.functional.rotate(patch, angle, interpolation=v2.InterpolationMode.BILINEAR, fill=GREY)
        canvas[index, :, at + lo:at + hi, at + lo:at + hi] = turned[:, lo:hi, lo:hi]
    return canvas


@torch.no_grad()
def joint_responses(net: torch.nn.Module, spec: ModelSpec, layer: LayerSpec,
                    examples: Sequence[tuple[int, Tensor, int, int]], device: torch.device,
                    batch: int = 64, poll: Callable[[], None] | None = None) -> dict[int, np.ndarray]:
    """Each unit's response to each rotation of its examples (averaged over them): ``examples`` pairs a unit's
    index with one example (the input image, and the position it fired at); units of one receptive field share
    a pass, each cut and read on its own field (`field_groups`)."""
    out: dict[int, np.ndarray] = {}
    for group in field_groups(spec, layer):
        mine = [example for example in examples if example[0] in group.units]
        if mine:
            out.update(_joint_responses(net, layer, group, mine, device, batch, poll))
    return out


def _joint_responses(net: torch.nn.Module, layer: LayerSpec, group: FieldGroup,
                     examples: Sequence[tuple[int, Tensor, int, int]], device: torch.device, batch: int,
                     poll: Callable[[], None] | None) -> dict[int, np.ndarray]:
    where = group.placement
    per_pass = max(1, batch // len(ROTATIONS))
    sums: dict[int, Tensor] = {}
    counts: dict[int, int] = {}
    turns = len(ROTATIONS)
    for start in range(0, len(examples), per_pass):
        chunk = examples[start:start + per_pass]
        images = torch.cat([rotated_crops(image, group.geometry, where, y, x) for _, image, y, x in chunk])
        read = _read(net, layer, images.to(device), where.position).float().cpu()
        for number, (unit, *_) in enumerate(chunk):
            values = read[number * turns:(number + 1) * turns, unit]
            sums[unit] = sums.get(unit, 0) + values
            counts[unit] = counts.get(unit, 0) + 1
        if poll is not None:
            with torch.enable_grad():  # a request served here may render (optimize an image)
                poll()
    return {unit: (sums[unit] / counts[unit]).numpy() for unit in sums}


@torch.no_grad()
def family_joint_responses(net: torch.nn.Module, spec: ModelSpec, layer: LayerSpec, reference: int,
                           examples: Sequence[tuple[Tensor, int, int]], members: Sequence[int], device: torch.device,
                           batch: int = 64) -> dict[int, np.ndarray]:
    """Curve Detectors' joint tuning of a family: each member's response to every rotation of the ``reference``
    unit's examples (each an input image and the position the reference fired at), averaged over them, read at
    the reference's position and on its receptive field."""
    group = next(group for group in field_groups(spec, layer) if reference in group.units)
    where, turns = group.placement, len(ROTATIONS)
    total: Tensor | None = None
    for start in range(0, len(examples), max(1, batch // turns)):
        chunk = examples[start:start + max(1, batch // turns)]
        images = torch.cat([rotated_crops(image, group.geometry, where, y, x) for image, y, x in chunk])
        read = _read(net, layer, images.to(device), where.position).float().cpu()[:, list(members)]
        summed = read.reshape(len(chunk), turns, len(members)).sum(dim=0)
        total = summed if total is None else total + summed
    if total is None:
        return {}
    return {member: (total[:, number] / len(examples)).numpy() for number, member in enumerate(members)}


def _family_joint(stage: Stage, layer: LayerSpec, ids: dict[tuple[str, int], int], examples: _Examples,
                  files: dict, rows: list[dict]) -> list[dict]:  # noqa: ANN001
    """The curve family's joint-tuning rows: its `FAMILY_UNITS` most curve-selective units (selectivity above 0), each
    answering rotations of the most selective one's top examples; none without curves tuning or examples."""
    ranked = sorted((row for row in rows if row["family"] == "curves" and row["selectivity"] > 0),
                    key=lambda row: -row["selectivity"])[:FAMILY_UNITS]
    if not ranked:
        return []
    by_id = {unit_id: index for (_, index), unit_id in ids.items()}
    members = [by_id[row["unit_id"]] for row in ranked]
    transform = input_transform(stage.spec)
    chosen = []
    for path, y, x in examples.by_unit.get(ranked[0]["unit_id"], []):
        if path in files:
            try:
                chosen.append((transform(load_rgb(files[path])), y, x))
            except OSError:
                continue
    if not chosen:
        return []
    curves = family_joint_responses(stage.net, stage.spec, layer, members[0], chosen, members, stage.device)
    orientation = {by_id[row["unit_id"]]: row["preferred"]["orientation"] for row in ranked}
    out = []
    for member, curve in curves.items():
        figures = joint_figures(curve)
        figures["figures"]["reference"] = members[0]
        # Where the member should peak if the family tiles orientation: its preferred orientation less the reference's.
        figures["figures"]["expected_rotation"] = (orientation[member] - orientation[members[0]]) % 360
        out.append({"unit_id": ids[layer.name, member], "family": FAMILY_JOINT, "responses": _rounded(curve), **figures})
    return out


def _tune_layer(stage: Stage, layer: LayerSpec, config: TuningConfig, ids: dict[tuple[str, int], int],
                examples: _Examples | None, files: dict, poll: Callable[[], None] | None) -> list[dict]:  # noqa: ANN001
    spec, net, device = stage.spec, stage.net, stage.device
    arrays = {name: responses(net, spec, layer, FAMILIES[name], device, config.batch, poll)
              for name in config.families if name != JOINT}
    joint = _joint(stage, layer, ids, examples, files, poll) if examples is not None and JOINT in config.families else {}
    lines = arrays.get("lines")
    rows = []
    for unit in range(layer.channels):
        unit_id = ids[layer.name, unit]
        top = examples.top.get(unit_id) if examples else None
        for name, values in arrays.items():
            figures = family_figures(FAMILIES[name], values[..., unit], top,
                                     lines[..., unit] if name == "curves" and lines is not None else None)
            rows.append({"unit_id": unit_id, "family": name, "responses": _rounded(values[..., unit]), **figures})
        if unit in joint:
            rows.append({"unit_id": unit_id, "family": JOINT, "responses": _rounded(joint[unit]),
                         **joint_figures(joint[unit])})
    if joint and examples is not None:
        rows += _family_joint(stage, layer, ids, examples, files, rows)
    return rows


def _joint(stage: Stage, layer: LayerSpec, ids: dict[tuple[str, int], int], examples: _Examples,
           files: dict, poll: Callable[[], None] | None) -> dict[int, np.ndarray]:  # noqa: ANN001
    """Each unit's joint-tuning curve, by unit index (units without a readable top example have none)."""
    transform = input_transform(stage.spec)
    loaded: dict[str, Tensor | None] = {}

    def image(path: str) -> Tensor | None:
        if path not in loaded:
            try:
                loaded[path] = transform(load_rgb(files[path])) if path in files else None
            except OSError:
                loaded[path] = None
        return loaded[path]

    by_index = {unit_id: index for (_, index), unit_id in ids.items()}
    chosen = [(by_index[unit_id], pixels, y, x) for unit_id, found in examples.by_unit.items() if unit_id in by_index
              for path, y, x in found if (pixels := image(path)) is not None]
    return joint_responses(stage.net, stage.spec, layer, chosen, stage.device, poll=poll)


# Figures -----------------------------------------------------------------------------------------


def _rounded(values: np.ndarray) -> list:
    return np.round(values.astype(np.float64), 4).tolist()


def resultant(curve: np.ndarray, angles: Sequence[float], period: int) -> float:
    """The tuning curve's resultant length (0: flat, 1: one angle only), on the rectified responses."""
    weights = np.maximum(curve, 0)
    total = float(weights.sum())
    if total <= 0:
        return 0.0
    phases = np.radians(np.asarray(angles)) * (360 / period)
    return float(abs((weights * np.exp(1j * phases)).sum()) / total)


def orientation_selectivity(curve: np.ndarray, angles: Sequence[float]) -> float:
    """The orientation selectivity index (R_pref - R_orth) / (R_pref + R_orth) on the rectified responses, R_orth the
    mean response at the preferred orientation plus and minus 90 degrees (the nearest sampled angles): 1 for a unit
    silent at the orthogonal orientation, 0 for an untuned one."""
    values = np.maximum(np.asarray(curve, dtype=np.float64), 0)
    angles = np.asarray(angles, dtype=np.float64)
    best = int(values.argmax())
    preferred = float(values[best])
    orthogonal = []
    for turn in (90.0, -90.0):
        target = angles[best] + turn
        distance = np.abs((angles - target + 180) % 360 - 180)
        orthogonal.append(float(values[int(distance.argmin())]))
    orth = float(np.mean(orthogonal))
    return (preferred - orth) / (preferred + orth) if preferred + orth > 0 else 0.0


def half_width(curve: np.ndarray, step: float) -> float | None:
    """Half-width at half maximum of a circular tuning curve in degrees (samples ``step`` apart), on the
    rectified responses: from the peak to where the curve falls halfway to its minimum, averaged over both
    sides; None where it never does (a flat curve)."""
    values = np.maximum(curve, 0)
    peak, low = int(values.argmax()), float(values.min())
    level = (float(values[peak]) + low) / 2
    if values[peak] <= low:
        return None
    widths = []
    for direction in (1, -1):
        for offset in range(1, len(values)):
            value = values[(peak + direction * offset) % len(values)]
            if value <= level:
                previous = values[(peak + direction * (offset - 1)) % len(values)]
                widths.append((offset - 1 + (previous - level) / (previous - value)) * step)
                break
        else:
            return None
    return float(np.mean(widths))


def family_figures(family: Family, values: np.ndarray, top: float | None, lines: np.ndarray | None = None) -> dict:
    """A unit's preferred parameters and selectivity figures for one family's response array."""
    rectified = np.maximum(values, 0)
    index = np.unravel_index(int(values.argmax()), values.shape)
    preferred = {axis.name: axis.values[i] for axis, i in zip(family.axes, index)}
    angle = family.angle
    curve = values[(slice(None), *index[1:])]
    peak, mean = float(rectified.max()), float(rectified.mean())
    figures: dict = {
        "peak": round(float(values.max()), 4),
        "peak_over_mean": round(peak / mean, 3) if mean > 0 else None,
        "resultant_length": round(resultant(curve, angle.values, angle.period), 4),
        "half_width": _round(half_width(curve, angle.values[1] - angle.values[0])),
        # How much of the unit's real drive the best stimulus reaches: its peak over the top example's activation.
        "drive": round(peak / top, 3) if top and top > 0 else None,
    }
    # Read from the tuning curve alone: the orientation selectivity index (the response at the preferred orientation
    # against the mean at the two orthogonal ones); for hues, which have no orthogonal, the resultant length. The
    # drive is a figure beside it, not a factor.
    if angle.name == "orientation":
        figures["osi"] = round(orientation_selectivity(curve, angle.values), 4)
        selectivity = figures["osi"]
    else:
        selectivity = figures["resultant_length"]
    if family.name == "curves" and lines is not None:
        line_peak = float(np.maximum(lines, 0).max())
        figures["line_peak"] = round(float(lines.max()), 4)
        figures["curve_over_line"] = round(peak / line_peak, 3) if line_peak > 0 else None
        # Curve Detectors' curve neurons answer curves more than any line: a unit whose best line reaches its best
        # curve is a line (or edge) detector, whatever its curve tuning looks like.
        if peak <= line_peak:
            selectivity = 0.0
    return {"preferred": preferred, "figures": figures, "selectivity": round(selectivity, 4)}


def joint_figures(curve: np.ndarray) -> dict:
    """Joint tuning: the preferred rotation, and how sharply the response follows the rotation."""
    best = int(curve.argmax())
    figures = {"peak": round(float(curve.max()), 4), "at_zero": round(float(curve[0]), 4),
               "resultant_length": round(resultant(curve, ROTATIONS, 360), 4),
               "half_width": _round(half_width(curve, ROTATIONS[1] - ROTATIONS[0]))}
    return {"preferred": {"rotation": ROTATIONS[best]}, "figures": figures, "selectivity": figures["resultant_length"]}


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _write(store: Store, model_id: int, recipe: dict, rows: list[dict], units: list[int]) -> None:
    """Replace the layer's tuning rows and record the run that made them, in one transaction."""
    for attempt in store.retrying():  # a worker may hold the lock
        with attempt, store.transaction() as session:
            run = start_run(session, "tuning", model_id, recipe, weights_sha256=recipe["weights_sha256"])
            replace_rows(session, UnitTuning, UnitTuning.unit_id, units, rows, run)
            finish_run(session, run)
