"""Ablation (issue 23): the network's decisions over the dataset without a unit, a set of units or a direction.

The ablated layer's output (after its ReLU, what the next layers read) is edited where it flows on
(`Network.spliced`): the chosen channels set to zero or to their mean over the dataset's positions, or a
direction's component (the output's dot product with the unit-norm direction) removed or set to its mean.
Each image goes through the intact and the ablated network, decoded once (the intact pass also takes the
layer's means), so an ablation costs two forward passes over the labelled images: top-1 and top-5 before
and after, and the classes whose correct-class probability changes most.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from sqlalchemy import delete, select
from torch import Tensor

from app.core.contracts import ABLATION_MODES
from app.core.errors import MicroscopeError
from app.core.store import Ablation, Layer, Unit
from app.core.zoo.skips import has_map, layer_skips
from app.core.store.algorithms import ALGORITHMS
from precompute.running.images import batches, eval_transform, list_images
from precompute.models.derived import base_network
from precompute.running.runs import catalogued_model, digested, finish_run, start_run
from precompute.running.context import Stage

MODES = ABLATION_MODES
#: Classes listed per ablation: those whose correct-class probability changes most.
CLASSES = 10


@dataclass(frozen=True)
class AblationTarget:
    """What is ablated: ``units`` of ``layer``, or (``direction``: a derived layer's unit) a direction over it.
    ``key`` names it in the store and the job queue (``units:mixed3b:1,5``, ``direction:mixed3b_sae:17``,
    ``family:curves:mixed3b:10``, ``probe:<id>:mixed4c``)."""

    key: str
    layer: str
    units: tuple[int, ...] = ()
    direction: tuple[str, int] | None = None
    label: str = ""


@dataclass
class AblationResult:
    key: str
    mode: str
    figures: dict = field(default_factory=dict)
    seconds: float = 0.0
    reused: bool = False


def target_of(store, spec, key: str) -> AblationTarget:  # noqa: ANN001
    """The target a key names: ``units:LAYER:1,5``, ``family:FAMILY:LAYER:N`` (the N most selective units of a tuning
    family, as its page ranks them) or ``direction:DERIVED:INDEX`` (a derived layer's direction over its base)."""
    from app.core.store import Model, UnitTuning

    parts = key.split(":")
    try:
        if parts[0] == "units" and len(parts) == 3:
            units = tuple(int(unit) for unit in parts[2].split(","))
            label = f"{parts[1]}:{parts[2]}" if len(units) == 1 else f"{len(units)} units of {parts[1]}"
            return AblationTarget(key, parts[1], units, label=label)
        if parts[0] == "family" and len(parts) == 4:
            family, layer, count = parts[1], parts[2], int(parts[3])
            with store.session() as session:
                units = tuple(session.scalars(
                    select(Unit.index).join(UnitTuning, UnitTuning.unit_id == Unit.id).join(Layer, Unit.layer_id == Layer.id)
                    .join(Model, Layer.model_id == Model.id)
                    .where(Model.name == spec.name, Layer.name == layer, UnitTuning.family == family)
                    .order_by(UnitTuning.selectivity.desc(), Unit.index).limit(count)))
            if not units:
                raise MicroscopeError(f"{layer} has no {family} tuning: run `microscope precompute tuning` first")
            return AblationTarget(key, layer, units, label=f"the {len(units)} most {family}-selective units of {layer}")
        if parts[0] == "direction" and len(parts) == 3:
            derived = spec.layer(parts[1])
            if not derived.is_derived:
                raise MicroscopeError(f"{parts[1]} is not a derived layer: ablate its units")
            return AblationTarget(key, derived.inputs[0], (), (parts[1], int(parts[2])), label=f"{parts[1]}:{parts[2]}")
    except ValueError:
        pass
    raise MicroscopeError(f"not an ablation target: {key!r} (units:LAYER:1,5, family:FAMILY:LAYER:N or "
                          "direction:DERIVED:INDEX)")


def editor(mode: str, units: Sequence[int] = (), vector: Tensor | None = None,
           means: Tensor | None = None) -> Callable[[Tensor], Tensor]:
    """The edit of a layer's output that ablates ``units`` (or the ``vector`` direction) by ``mode``; ``means`` are
    every channel's mean over the dataset (or the direction's), for ``mean``."""
    if mode not in MODES:
        raise MicroscopeError(f"unknown ablation mode {mode!r}: choose from {', '.join(MODES)}")
    if vector is not None:
        direction = vector.float()

        def along(output: Tensor) -> Tensor:
            v = direction.to(output.device, output.dtype)
            component = torch.einsum("bchw,c->bhw", output, v)
            keep = 0 if mode == "zero" else means.to(output.device, output.dtype)  # type: ignore[union-attr]
            return output - (component - keep)[:, None] * v[None, :, None, None]

        return along
    index = torch.as_tensor(list(units), dtype=torch.long)

    def channels(output: Tensor) -> Tensor:
        edited = output.clone()
        if mode == "zero":
            edited[:, index] = 0
        else:
            edited[:, index] = means.to(output.device, output.dtype)[index][:, None, None]  # type: ignore[index]
        return edited

    return channels


def run_ablation(stage: Stage, root: Path, target: AblationTarget, mode: str = "zero", batch_size: int = 50,
                 poll: Callable[[], None] | None = None) -> AblationResult:
    """Ablate ``target`` by ``mode`` over the labelled images under ``root`` and store the figures (skipped when
    stored with this recipe)."""
    net = base_network(stage.net)
    spec = net.spec
    layer = spec.layer(target.layer)
    if not has_map(layer):
        raise MicroscopeError(f"{target.layer} has no spatial output to ablate ({layer_skips(layer)['ablation']})")
    vector = None
    if target.direction is not None:
        derived, index = target.direction
        vector = stage.net.direction_vectors(derived, [index])[0].detach().cpu()  # type: ignore[operator]
    elif not target.units or any(not 0 <= unit < layer.channels for unit in target.units):
        raise MicroscopeError(f"{target.layer} has units 0-{layer.channels - 1}: ablate some of them")
    files = [file for file in list_images(root, spec) if file.label is not None]
    if not files:
        raise MicroscopeError(f"no image under {root} has a class: nothing to score the ablation on")
    recipe = digested({
        "algorithm": ALGORITHMS["ablation"], "model": spec.name, "weights_sha256": stage.weights_sha256, "key": target.key,
        "layer": target.layer, "units": list(target.units), "direction": list(target.direction or ()), "mode": mode,
        "images": len(files), "dataset": str(root), "framing": "the model's evaluation framing (as `model eval`)",
        "edit": "the layer's output after its ReLU, where the next layers read it",
        "mean": "over every position of every image" if mode == "mean" else None,
    })
    with stage.store.session() as session:
        model_id = catalogued_model(session, spec).id
        found = session.scalar(select(Ablation).where(Ablation.model_id == model_id, Ablation.key == target.key,
                                                      Ablation.mode == mode))
        if found is not None and found.recipe_sha256 == recipe["recipe_sha256"]:
            return AblationResult(target.key, mode, dict(found.figures), reused=True)
    started = time.perf_counter()
    # Zero ablation: one pass, the layers up to the ablated one run once and the rest on the intact and the edited
    # output side by side. Mean ablation: the intact pass also sums the layer's means, then an ablated pass runs over
    # the kept pixels.
    totals = _Totals(vector)
    if mode == "zero":
        edit = editor("zero", target.units, vector)
        forward = net.spliced(target.layer, lambda output: torch.cat([output, edit(output)]))
    else:
        forward = net.spliced(target.layer, totals.record)
    kept: list[Tensor] = []
    labels, intact_logits, ablated_logits = [], [], []
    with torch.inference_mode():
        for batch in batches(files, eval_transform(spec), batch_size, workers=0):
            if batch.indices:
                x = batch.images.to(stage.device).contiguous(memory_format=torch.channels_last)
                try:
                    logits = forward(x).float().cpu()
                except RuntimeError:  # a later layer also reads an earlier one (a dense skip): run the two apart
                    if mode != "zero" or intact_logits:
                        raise
                    apart = net.spliced(target.layer, edit)
                    forward = lambda images: torch.cat([net.logits(images), apart(images)])  # noqa: E731
                    logits = forward(x).float().cpu()
                intact_logits.append(logits[:len(x)])
                if mode == "zero":
                    ablated_logits.append(logits[len(x):])
                else:
                    kept.append((batch.images * 255).round().to(torch.uint8))
                labels += [files[i].label for i in batch.indices]
            if poll is not None:
                poll()
        if mode == "mean":
            ablated = net.spliced(target.layer, editor("mean", target.units, vector, totals.means()))
            for images in kept:
                x = (images.float() / 255).to(stage.device).contiguous(memory_format=torch.channels_last)
                ablated_logits.append(ablated(x).float().cpu())
                if poll is not None:
                    poll()
    figures = _figures(spec, torch.cat(intact_logits), torch.cat(ablated_logits), torch.tensor(labels))
    figures["seconds"] = round(time.perf_counter() - started, 1)
    for attempt in stage.store.retrying():
        with attempt, stage.store.transaction() as session:
            layer_id = session.scalar(select(Layer.id).where(Layer.model_id == model_id, Layer.name == target.layer))
            run = start_run(session, "ablation", model_id, recipe, weights_sha256=stage.weights_sha256, seed=0)
            session.execute(delete(Ablation).where(Ablation.model_id == model_id, Ablation.key == target.key,
                                                   Ablation.mode == mode))
            direction_id = None
            if target.direction is not None:
                direction_id = session.scalar(select(Unit.id).join(Layer, Unit.layer_id == Layer.id).where(
                    Layer.model_id == model_id, Layer.name == target.direction[0], Unit.index == target.direction[1]))
            session.add(Ablation(model_id=model_id, layer_id=layer_id, key=target.key, mode=mode,
                                 units=list(target.units), direction_id=direction_id, label=target.label,
                                 figures=figures, recipe_sha256=recipe["recipe_sha256"], recipe=recipe, run_id=run.id))
            finish_run(session, run)
    return AblationResult(target.key, mode, figures, seconds=time.perf_counter() - started)


class _Totals:
    """Sums a layer's output (each channel's, or along a direction) as it flows past, leaving it as it is."""

    def __init__(self, vector: Tensor | None) -> None:
        self.vector = vector
        self.total: Tensor | None = None
        self.count = 0

    def record(self, output: Tensor) -> Tensor:
        if self.vector is not None:
            values = torch.einsum("bchw,c->bhw", output, self.vector.to(output)).double()
            summed = values.sum()
        else:
            summed = output.double().sum(dim=(0, 2, 3))
        self.total = summed if self.total is None else self.total + summed
        self.count += output.shape[0] * output.shape[-2] * output.shape[-1]
        return output

    def means(self) -> Tensor:
        if self.total is None or not self.count:
            raise MicroscopeError("no image was read: nothing to take the mean over")
        return (self.total / self.count).float().cpu()


def _figures(spec, intact: Tensor, ablated: Tensor, labels: Tensor) -> dict:  # noqa: ANN001
    def accuracy(logits: Tensor) -> tuple[float, float, Tensor]:
        best = logits.topk(5, dim=1).indices
        return (float((best[:, 0] == labels).float().mean()), float((best == labels[:, None]).any(dim=1).float().mean()),
                best[:, 0] == labels)

    top1, top5, right = accuracy(intact)
    after1, after5, right_after = accuracy(ablated)
    rows = torch.arange(len(labels))
    change = ablated.softmax(dim=1)[rows, labels] - intact.softmax(dim=1)[rows, labels]
    logits = next(layer for layer in spec.layers if layer.kind == "logits")
    classes: dict[int, list[float]] = {}
    for label, delta in zip(labels.tolist(), change.tolist()):
        classes.setdefault(label, []).append(delta)
    ranked = sorted(classes.items(), key=lambda item: -abs(sum(item[1]) / len(item[1])))[:CLASSES]
    return {
        "images": len(labels), "top1": round(top1, 4), "top5": round(top5, 4), "ablated_top1": round(after1, 4),
        "ablated_top5": round(after5, 4), "changed_top1": int((right != right_after).sum()),
        "mean_probability_change": round(float(change.mean()), 5),
        "classes": [{"index": label, "label": spec.unit_label(logits, label), "images": len(deltas),
                     "probability_change": round(sum(deltas) / len(deltas), 4)} for label, deltas in ranked],
    }
