"""Directions as units on the pages (issue 22): what a direction is made of, what a unit is part of.

A derived layer (``mixed4c_nmf``, ``mixed3b_sae``) is browsed like any
other; these builders add what only directions have: the factorization's
figures and recipe, each direction's base units with the largest weights
("made of", linked like circuit inputs), and on a base unit's page the
directions it weighs most in, with how many directions put a large weight on
it (its polysemanticity in that dictionary).
"""

from __future__ import annotations

from sqlalchemy import Connection

from app import queries, urls
from app.catalog import Catalog, LayerEntry, ModelEntry
from app.page_types import Match, FactorSummary, PartOf, Weighted
from app.refs import pictures, unit_ref

#: Directions listed per derived layer on a base unit's page.
PART_OF_SHOWN = 6


def _layer_by_id(model: ModelEntry, layer_id: int) -> LayerEntry | None:
    return next((layer for layer in model.layers if layer.id == layer_id), None)


def factorization(connection: Connection, model: ModelEntry, layer: LayerEntry) -> FactorSummary | None:
    """The derived ``layer``'s factorization (None for a trained layer, or before its factors stage)."""
    row = connection.execute(queries.factorization, {"layer": layer.id}).first()
    if row is None:
        return None
    method, components, key, figures, recipe, base_id = row
    base = _layer_by_id(model, base_id)
    base_name = base.name if base is not None else "?"
    return FactorSummary(layer=layer.name, url=urls.layer(model.name, layer.name), method=method, base=base_name,
                         base_url=urls.layer(model.name, base_name), components=components, figures=figures,
                         recipe=recipe, arrays_url=urls.blob(key))


def derived_over(connection: Connection, model: ModelEntry, layer: LayerEntry) -> list[dict[str, str]]:
    """The derived layers over ``layer``: ``{"name", "method", "url"}``."""
    found = []
    for layer_id, method in connection.execute(queries.derived_layers, {"layer": layer.id}):
        derived = _layer_by_id(model, layer_id)
        if derived is not None:
            found.append({"name": derived.name, "method": method, "url": urls.layer(model.name, derived.name)})
    return found


def made_of(catalog: Catalog, connection: Connection, unit_id: int) -> list[Weighted]:
    """A direction's base units, largest weight (by magnitude) first."""
    rows = connection.execute(queries.made_of, {"unit": unit_id}).all()
    shown = pictures(connection, [unit for unit, _ in rows])
    return [Weighted(unit_ref(catalog, unit, shown), weight) for unit, weight in rows if unit in catalog.units]


def matches(catalog: Catalog, connection: Connection, unit_id: int) -> list[Match]:
    """The unit's nearest units in other models, by the correlation of their pooled activations (universality), each
    with its position-wise correlation and the permutation null's thresholds for the unit's layer."""
    rows = [row for row in connection.execute(queries.matches, {"unit": unit_id}) if row.other_id in catalog.units]
    shown = pictures(connection, [row.other_id for row in rows])
    model, layer, _ = catalog.units[unit_id]
    out = []
    for other, value, spatial, params in rows:
        null = ((params or {}).get("null_thresholds") or {}).get(model, {}).get(layer, {})
        threshold, spatial_threshold = null.get("pooled"), null.get("positionwise")
        out.append(Match(unit_ref(catalog, other, shown), value, spatial, threshold, spatial_threshold,
                         None if threshold is None else value > threshold))
    return out


def part_of(catalog: Catalog, connection: Connection, model: ModelEntry, unit_id: int) -> list[PartOf]:
    """Per derived layer over the unit's layer: the directions it weighs most in and its polysemanticity there."""
    by_layer: dict[str, list[tuple[int, float]]] = {}
    for direction, weight in connection.execute(queries.part_of, {"unit": unit_id}):
        if direction in catalog.units:
            by_layer.setdefault(catalog.units[direction][1], []).append((direction, weight))
    mixtures = {}
    for layer_id, method, features, effective in connection.execute(queries.mixtures, {"unit": unit_id}):
        derived = _layer_by_id(model, layer_id)
        if derived is not None:
            mixtures[derived.name] = (method, features, effective)
    sections = []
    for name in sorted(set(by_layer) | set(mixtures)):
        chosen = by_layer.get(name, [])[:PART_OF_SHOWN]
        shown = pictures(connection, [direction for direction, _ in chosen])
        method, features, effective = mixtures.get(name, (model.layer(name).kind, None, None))
        recipe = connection.execute(queries.factorization, {"layer": model.layer(name).id}).first()
        threshold = (recipe[4] or {}).get("large_weight") if recipe is not None else None
        sections.append(PartOf(layer=name, url=urls.layer(model.name, name), method=method, features=features,
                               effective=effective, threshold=threshold,
                               directions=[Weighted(unit_ref(catalog, direction, shown), weight)
                                           for direction, weight in chosen]))
    return sections
