"""Search: ``mixed4c:447``, ``mixed4c 447``, a class name, a concept or a layer name lands on its page.

Hits come in this order: a unit by its address; a model or layer by its exact
name; class units whose label is the query; units whose concept label
(`app.core.zoo.concepts`) is the query or falls under it in WordNet ("dog" finds
the units labelled "hound"), best score first; then class units whose label
contains the query, whole-word matches ("dog" in "sled dog") before others
("hotdog").
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from sqlalchemy import Connection, select

from app import urls
from app.catalog import Catalog
from app.core.errors import NotFound
from app.core.store import UnitLabel
from app.core.zoo.concepts import Hierarchy

_UNIT = re.compile(r"^\s*(?:(?P<model>[\w.-]+)[/:\s]+)?(?P<layer>[\w]+)\s*[:/\s]\s*(?P<unit>\d+)\s*$")


@dataclass(frozen=True)
class Hit:
    label: str
    url: str
    #: The unit found (None for a model or layer): its picture is shown beside it.
    unit_id: int | None = None
    #: Why it matched: ``unit``, ``model``, ``layer``, ``class`` (its class label), ``concept`` (its concept label).
    reason: str = "unit"
    #: A concept hit's score (`app.core.zoo.concepts`).
    score: float | None = None


def _concept_hits(catalog: Catalog, connection: Connection | None, lowered: str) -> list[Hit]:
    """Units whose concept label is the concept named ``lowered``, or one under it, best score first."""
    if connection is None:
        return []
    under = Hierarchy.load().under(lowered)
    if not under:
        return []
    rows = connection.execute(
        select(UnitLabel.unit_id, UnitLabel.name, UnitLabel.score, UnitLabel.count, UnitLabel.of)
        .where(UnitLabel.concept.in_(under)).order_by(UnitLabel.score.desc(), UnitLabel.unit_id)
    )
    hits, seen = [], set()
    for unit_id, name, score, count, of in rows:
        if unit_id in seen or unit_id not in catalog.units:
            continue
        seen.add(unit_id)
        model, layer, index = catalog.units[unit_id]
        hits.append(Hit(f"{model} {layer}:{index}: {name} ({count} of {of} top examples)", urls.unit(model, layer, index),
                        unit_id, "concept", score))
    return hits


def _class_hits(catalog: Catalog, label: str, units: list[tuple[str, str, int]]) -> list[Hit]:
    return [Hit(f"{m} {layer}:{index} ({label})", urls.unit(m, layer, index),
                catalog.models[m].layer(layer).unit_id(index), "class") for m, layer, index in units]


def search(catalog: Catalog, query: str, connection: Connection | None = None) -> list[Hit]:
    """Pages matching ``query``, best first; one hit means the search lands there directly."""
    text = query.strip()
    if not text:
        return []
    match = _UNIT.match(text)
    if match:
        models = [catalog.model(match["model"])] if match["model"] else list(catalog.models.values())
        for model in models:
            if any(layer.name == match["layer"] for layer in model.layers):
                layer = model.layer(match["layer"])
                unit_id = layer.unit_id(int(match["unit"]))  # raises UnitNotFound for a unit out of range
                return [Hit(f"{model.name} {layer.name}:{match['unit']}", urls.unit(model.name, layer.name, int(match["unit"])),
                            unit_id)]
    lowered = " ".join(text.lower().split())
    hits = [Hit(model.name, urls.model(model.name), reason="model") for model in catalog.models.values()
            if model.name == lowered]
    for model in catalog.models.values():
        hits += [Hit(f"{model.name} {layer.name}", urls.layer(model.name, layer.name), reason="layer")
                 for layer in model.layers if layer.name == lowered]
    hits += _class_hits(catalog, lowered, catalog.labels.get(lowered, []))
    hits += _concept_hits(catalog, connection, lowered)
    if hits:
        return hits
    word = re.compile(rf"\b{re.escape(lowered)}\b")
    partial = sorted(((label, units) for label, units in catalog.labels.items() if lowered in label),
                     key=lambda item: (not word.search(item[0]), item[0]))
    hits = [hit for label, units in partial for hit in _class_hits(catalog, label, units)]
    if hits:
        return hits
    names = {layer.name for model in catalog.models.values() for layer in model.layers} | set(catalog.labels)
    raise NotFound(f"nothing matches {query!r}", tuple(difflib.get_close_matches(lowered, names, n=5, cutoff=0.6)))
