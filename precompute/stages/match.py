"""The match stage: each unit's nearest units in another model, on the same images (issue 22: universality).

Zoom In's third claim is that networks trained apart learn analogous features. For two models in one store,
each model sees every image in its own input convention; each unit's activation after its ReLU is averaged over
its layer's positions (pooled, since two architectures' grids differ), giving one vector over the images per
unit. Every unit of one model's main layers is correlated (Pearson, over the images) with every unit of the
other's, and each keeps its 5 best matches with their correlations, both ways (`app.core.store.UnitMatch`). A unit
that never varies over the images (dead) matches nothing.

Beside the pooled correlation, each match has its position-wise one (Li et al. 2016, convergent learning:
correlation over images and positions; two architectures' maps are each averaged onto a common `GRID` x `GRID`
grid of the image, so a position means the same part of the image in both). Against chance, a null for the best
match: the second model's image order permuted (`PERMUTATIONS` times, seeded), each first-model unit's best
correlation over all of the second model's units recorded; a layer's match threshold is the 99th percentile of
those maxima over its units and permutations, for each correlation. A match counts as above chance when it is
above its layer's threshold, not a fixed 0.5. `reestimate_batchnorm` gives a random-weight copy the BatchNorm
statistics of the images it will see (`bench/match.py`'s random control).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from sqlalchemy import delete
from torch import Tensor

from app.core.errors import MicroscopeError
from app.core.store import Store, UnitMatch
from app.core.zoo import LayerSpec
from app.core.zoo.skips import require
from app.core.store.algorithms import ALGORITHMS
from precompute.stages.examples import fingerprint, input_transform
from precompute.running.images import batches, list_images
from precompute.models.base import Network
from precompute.models.derived import base_network
from precompute.running.runs import catalogued_model, digested, finish_run, progress_bar, start_run, unit_ids

#: Matches kept per unit.
KEPT = 5
#: The common grid position-wise correlations are taken on (each layer's map averaged onto it).
GRID = 4
#: Image-order permutations of the null, and its percentile.
PERMUTATIONS = 10
NULL_PERCENTILE = 99.0


@dataclass
class MatchResult:
    units: int = 0
    matches: int = 0
    seconds: float = 0.0
    #: Per layer of the first model: the fraction of its units whose best match in the other model is at least 0.5.
    matched: dict[str, float] = field(default_factory=dict)
    #: Per layer of the first model and correlation (``pooled``, ``positionwise``): the null's threshold and the
    #: fraction of units whose best match is above it.
    null: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)


def matched_layers(net: Network) -> list[LayerSpec]:
    """The main layers whose units are matched (the logits too: a class in one model has its class in the other)."""
    return [layer for layer in net.spec.layers if layer.is_main or layer.kind == "logits"]


def pooled(net: Network, root: Path, device: torch.device, batch: int = 32, progress: bool = True,
           grid: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
    """(images, units) per matched layer: each unit's activation after its ReLU, averaged over positions (a logit
    as it is). With ``grid`` (a dict to fill), also (images, GRID * GRID, units) per layer: the map averaged onto the
    common grid (a logit repeated at every position)."""
    layers = matched_layers(net)
    names = tuple(layer.name for layer in layers)
    kinds = {layer.name: layer.kind for layer in layers}
    files = list_images(root)
    found: dict[str, list[Tensor]] = {name: [] for name in names}
    bar = progress_bar(total=len(files), unit="img", desc=f"pool {net.spec.name}", enabled=progress)
    with torch.inference_mode():
        for images in batches(files, input_transform(net.spec), batch):
            if images.indices:
                for name, value in net(images.images.to(device), names).items():
                    value = value.float()
                    if kinds[name] != "logits":
                        value = value.relu()
                    found[name].append(value.flatten(2).mean(dim=2).cpu() if value.dim() == 4 else value.cpu())
                    if grid is not None:
                        cells = (F.adaptive_avg_pool2d(value, GRID).flatten(2).transpose(1, 2) if value.dim() == 4
                                 else value[:, None, :].expand(-1, GRID * GRID, -1))
                        grid.setdefault(name, []).append(cells.cpu())
            bar.update(len(images.indices) + len(images.failed))
    bar.close()
    if any(not parts for parts in found.values()):
        raise MicroscopeError(f"no image under {root} could be read")
    if grid is not None:
        grid.update({name: torch.cat(parts) for name, parts in grid.items()})
    return {name: torch.cat(parts) for name, parts in found.items()}


def positionwise(first: dict[str, Tensor], second: dict[str, Tensor]) -> Tensor:
    """Pearson correlations (units of ``first``, units of ``second``) over images and grid positions (Li et al.)."""
    return correlations({name: value.flatten(0, 1) for name, value in first.items()},
                        {name: value.flatten(0, 1) for name, value in second.items()})[0]


def null_maxima(first: dict[str, Tensor], second: dict[str, Tensor], permutations: int = PERMUTATIONS,
                seed: int = 0) -> Tensor:
    """(permutations, units of ``first``): each unit's best correlation with any unit of ``second`` when the second
    model's images are put in a random order (a grid's positions move with their image). The first dimension of
    each tensor is the images."""
    generator = torch.Generator().manual_seed(seed)
    images = next(iter(second.values())).shape[0]
    maxima = []
    for _ in range(permutations):
        order = torch.randperm(images, generator=generator)
        shuffled = {name: value[order] for name, value in second.items()}
        if next(iter(first.values())).dim() == 3:
            corr = positionwise(first, shuffled)
        else:
            corr = correlations(first, shuffled)[0]
        maxima.append(corr.max(dim=1).values)
    return torch.stack(maxima)


def above_null(best: Tensor, maxima: Tensor, names: Sequence[tuple[str, int]],
               percentile: float = NULL_PERCENTILE) -> dict[str, dict[str, float]]:
    """Per layer of the rows: the null's ``percentile`` of its units' best correlations over the permutations, and the
    fraction of its units whose real best match is above it."""
    layers: dict[str, list[int]] = {}
    for column, (layer, _) in enumerate(names):
        layers.setdefault(layer, []).append(column)
    out = {}
    for layer, columns in layers.items():
        threshold = float(torch.quantile(maxima[:, columns].flatten().double(), percentile / 100))
        out[layer] = {"threshold": round(threshold, 4),
                      "above": round(float((best[columns] > threshold).float().mean()), 4)}
    return out


def reestimate_batchnorm(net: Network, root: Path, device: torch.device, batch: int = 32) -> None:
    """Give every BatchNorm of ``net`` the running statistics of the images under ``root`` (an average over one pass
    weighted by each batch's images, the rest of the network in eval mode): a random-weight copy then normalizes as a trained one would
    on those images, instead of by the made-up statistics its initializer leaves."""
    norms = [module for module in net.modules() if isinstance(module, torch.nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    loaded = [images.images for images in batches(list_images(root), input_transform(net.spec), batch) if images.indices]
    if not loaded:
        raise MicroscopeError(f"no image under {root} could be read")
    with torch.no_grad():
        net(loaded[0][:1].to(device))  # builds a traced network's graphs first: building one puts its modules in eval
        for norm in norms:
            norm.reset_running_stats()
            norm.train()
        seen = 0
        for images in loaded:
            for norm in norms:  # a running average weighted by images: the mean over every image of the pass
                norm.momentum = len(images) / (seen + len(images))
            net(images.to(device))
            seen += len(images)
    for norm in norms:
        norm.eval()


def standardized(activations: dict[str, Tensor]) -> tuple[Tensor, list[tuple[str, int]]]:
    """Every unit's activations over the images as zero-mean unit-norm columns (zero for a constant unit), and
    which (layer, unit) each column is."""
    columns, names = [], []
    for name, values in activations.items():
        centred = values - values.mean(dim=0)
        norm = centred.norm(dim=0)
        columns.append(torch.where(norm > 1e-8, centred / norm.clamp(min=1e-8), torch.zeros_like(centred)))
        names += [(name, unit) for unit in range(values.shape[1])]
    return torch.cat(columns, dim=1), names


def correlations(first: dict[str, Tensor], second: dict[str, Tensor]) -> tuple[Tensor, list, list]:
    """Pearson correlations (units of ``first``, units of ``second``) over the same images."""
    a, names_a = standardized(first)
    b, names_b = standardized(second)
    if a.shape[0] != b.shape[0]:
        raise MicroscopeError(f"the models saw different numbers of images ({a.shape[0]} and {b.shape[0]})")
    return a.T @ b, names_a, names_b


def best_matches(corr: Tensor, kept: int = KEPT) -> tuple[Tensor, Tensor]:
    """Each row's ``kept`` largest correlations and their columns."""
    values, columns = corr.topk(min(kept, corr.shape[1]), dim=1)
    return values, columns


def matched_fraction(corr: Tensor, names_a: Sequence[tuple[str, int]], threshold: float = 0.5) -> dict[str, float]:
    """Per layer of the rows: the fraction of its units whose best match is at least ``threshold``."""
    best = corr.max(dim=1).values
    by_layer: dict[str, list[float]] = {}
    for (layer, _), value in zip(names_a, best.tolist()):
        by_layer.setdefault(layer, []).append(value)
    return {layer: round(sum(v >= threshold for v in values) / len(values), 4) for layer, values in by_layer.items()}


def run_match(store: Store, nets: tuple[Network, Network], weights: tuple[str, str], root: Path, device: torch.device,
              progress: bool = True) -> MatchResult:
    """Match two catalogued models' units both ways on the images under ``root``; replaces their stored matches."""
    first, second = (base_network(net) for net in nets)
    if first.spec.name == second.spec.name:
        raise MicroscopeError(f"--models names {first.spec.name} twice: match two different models")
    for net in (first, second):
        require(net.spec, "universality")
    started = time.perf_counter()
    files = list_images(root)
    recipe = digested({"algorithm": ALGORITHMS["match"], "models": [first.spec.name, second.spec.name],
                       "weights_sha256": list(weights), "dataset_fingerprint": fingerprint(files),
                       "activation": "after the ReLU, averaged over the layer's positions (logits as they are)",
                       "similarity": "Pearson correlation over the images", "kept": KEPT,
                       "positionwise": f"Pearson over images and positions, each map averaged onto a {GRID}x{GRID} grid",
                       "null": f"{PERMUTATIONS} permutations of the second model's image order (seed 0); a layer's "
                               f"threshold is the {NULL_PERCENTILE:g}th percentile of its units' best correlations"})
    grids_first: dict[str, Tensor] = {}
    grids_second: dict[str, Tensor] = {}
    pooled_first = pooled(first, root, device, progress=progress, grid=grids_first)
    pooled_second = pooled(second, root, device, progress=progress, grid=grids_second)
    corr, names_a, names_b = correlations(pooled_first, pooled_second)
    spatial = positionwise(grids_first, grids_second)
    result = MatchResult(units=len(names_a) + len(names_b), matched=matched_fraction(corr, names_a))
    for kind, matrix, first_values, second_values in (("pooled", corr, pooled_first, pooled_second),
                                                      ("positionwise", spatial, grids_first, grids_second)):
        for layer, figures in above_null(matrix.max(dim=1).values, null_maxima(first_values, second_values),
                                         names_a).items():
            result.null.setdefault(layer, {})[kind] = figures
    reverse = {}
    for kind, matrix, first_values, second_values in (("pooled", corr.T, pooled_second, pooled_first),
                                                      ("positionwise", spatial.T, grids_second, grids_first)):
        for layer, figures in above_null(matrix.max(dim=1).values, null_maxima(first_values, second_values),
                                         names_b).items():
            reverse.setdefault(layer, {})[kind] = figures["threshold"]
    # What the null found (a result, not part of the digest): the run's params carry it to the pages.
    recipe["null_thresholds"] = {first.spec.name: {layer: {kind: figures["threshold"] for kind, figures in kinds.items()}
                                                   for layer, kinds in result.null.items()},
                                 second.spec.name: reverse}
    rows = []
    with store.session() as session:
        ids_a = unit_ids(session, catalogued_model(session, first.spec).id)
        ids_b = unit_ids(session, catalogued_model(session, second.spec).id)
    for matrix, rows_names, column_names, row_ids, column_ids in (
            (corr, names_a, names_b, ids_a, ids_b), (corr.T, names_b, names_a, ids_b, ids_a)):
        values, columns = best_matches(matrix)
        for row, (name, unit) in enumerate(rows_names):
            for rank, (value, column) in enumerate(zip(values[row].tolist(), columns[row].tolist())):
                if value <= 0:
                    break  # a constant unit, or nothing correlated at all
                spatial_value = float(spatial[row, column] if matrix is corr else spatial[column, row])
                rows.append({"unit_id": row_ids[name, unit], "other_id": column_ids[column_names[column]],
                             "rank": rank, "correlation": round(value, 4), "positionwise": round(spatial_value, 4)})
    for attempt in store.retrying():
        with attempt, store.transaction() as session:
            other = set(ids_b.values())
            run = start_run(session, "match", catalogued_model(session, first.spec).id, recipe,
                            weights_sha256=weights[0])
            session.execute(delete(UnitMatch).where(UnitMatch.unit_id.in_(list(ids_a.values())),
                                                    UnitMatch.other_id.in_(list(other))))
            session.execute(delete(UnitMatch).where(UnitMatch.unit_id.in_(list(other)),
                                                    UnitMatch.other_id.in_(list(ids_a.values()))))
            if rows:
                session.execute(UnitMatch.__table__.insert(), [{**row, "run_id": run.id} for row in rows])
            finish_run(session, run)
    result.matches = len(rows)
    result.seconds = time.perf_counter() - started
    return result
