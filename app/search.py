"""Search: ``mixed4c:447``, ``mixed4c 447``, a class name or a layer name lands on its page."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from app import urls
from app.catalog import Catalog
from app.errors import NotFound

_UNIT = re.compile(r"^\s*(?:(?P<model>[\w.-]+)[/:\s]+)?(?P<layer>[\w]+)\s*[:/\s]\s*(?P<unit>\d+)\s*$")


@dataclass(frozen=True)
class Hit:
    label: str
    url: str


def search(catalog: Catalog, query: str) -> list[Hit]:
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
                layer.unit_id(int(match["unit"]))  # raises UnitNotFound for a unit out of range
                return [Hit(f"{model.name} {layer.name}:{match['unit']}", urls.unit(model.name, layer.name, int(match["unit"])))]
    lowered = text.lower()
    hits = [Hit(model.name, urls.model(model.name)) for model in catalog.models.values() if model.name == lowered]
    for model in catalog.models.values():
        hits += [Hit(f"{model.name} {layer.name}", urls.layer(model.name, layer.name))
                 for layer in model.layers if layer.name == lowered]
    hits += [Hit(f"{m} {layer}:{index} ({lowered})", urls.unit(m, layer, index)) for m, layer, index in catalog.labels.get(lowered, [])]
    if hits:
        return hits
    partial = [
        Hit(f"{m} {layer}:{index} ({label})", urls.unit(m, layer, index))
        for label, units in catalog.labels.items() if lowered in label for m, layer, index in units
    ]
    if partial:
        return partial[:50]
    names = {layer.name for model in catalog.models.values() for layer in model.layers} | set(catalog.labels)
    raise NotFound(f"nothing matches {query!r}", tuple(difflib.get_close_matches(lowered, names, n=5, cutoff=0.6)))
