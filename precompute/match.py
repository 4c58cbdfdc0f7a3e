"""The match stage: each unit's nearest units in another model, on the same images (issue 22: universality).

Zoom In's third claim is that networks trained apart learn analogous features. For two models in one store,
each model sees every image in its own input convention; each unit's activation after its ReLU is averaged over
its layer's positions (pooled, since two architectures' grids differ), giving one vector over the images per
unit. Every unit of one model's main layers is correlated (Pearson, over the images) with every unit of the
other's, and each keeps its 5 best matches with their correlations, both ways (`app.store.UnitMatch`). A unit
that never varies over the images (dead) matches nothing. Against chance, `bench/match.py` matches against a
copy of the second model with seeded random weights.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from sqlalchemy import delete
from torch import Tensor

from app.errors import MicroscopeError
from app.store import Store, UnitMatch
from app.zoo import LayerSpec
from precompute.examples import fingerprint, input_transform
from precompute.images import batches, list_images
from precompute.models.base import Network
from precompute.models.derived import base_network
from precompute.runs import catalogued_model, digested, finish_run, progress_bar, start_run, unit_ids

MATCH_ALGORITHM = 1
#: Matches kept per unit.
KEPT = 5


@dataclass
class MatchResult:
    units: int = 0
    matches: int = 0
    seconds: float = 0.0
    #: Per layer of the first model: the fraction of its units whose best match in the other model is at least 0.5.
    matched: dict[str, float] = field(default_factory=dict)


def matched_layers(net: Network) -> list[LayerSpec]:
    """The main layers whose units are matched (the logits too: a class in one model has its class in the other)."""
    return [layer for layer in net.spec.layers if layer.is_main or layer.kind == "logits"]


def pooled(net: Network, root: Path, device: torch.device, batch: int = 32, progress: bool = True) -> dict[str, Tensor]:
    """(images, units) per matched layer: each unit's activation after its ReLU, averaged over positions (a logit
    as it is)."""
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
            bar.update(len(images.indices) + len(images.failed))
    bar.close()
    if any(not parts for parts in found.values()):
        raise MicroscopeError(f"no image under {root} could be read")
    return {name: torch.cat(parts) for name, parts in found.items()}


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
    started = time.perf_counter()
    files = list_images(root)
    recipe = digested({"algorithm": MATCH_ALGORITHM, "models": [first.spec.name, second.spec.name],
                       "weights_sha256": list(weights), "dataset_fingerprint": fingerprint(files),
                       "activation": "after the ReLU, averaged over the layer's positions (logits as they are)",
                       "similarity": "Pearson correlation over the images", "kept": KEPT})
    pooled_first = pooled(first, root, device, progress=progress)
    pooled_second = pooled(second, root, device, progress=progress)
    corr, names_a, names_b = correlations(pooled_first, pooled_second)
    result = MatchResult(units=len(names_a) + len(names_b), matched=matched_fraction(corr, names_a))
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
                rows.append({"unit_id": row_ids[name, unit], "other_id": column_ids[column_names[column]],
                             "rank": rank, "correlation": round(value, 4)})
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
