"""How every area shows a unit: its render, else its top dataset example's crop, and its top concept label."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection

from app import queries, urls
from app.catalog import Catalog
from app.page_types import UnitRef


@dataclass(frozen=True)
class Pictures:
    """What stands for each unit in grids and circuits: its render, else its top example's crop."""

    images: dict[int, str]
    placeholders: dict[int, str]
    concepts: dict[int, str] = field(default_factory=dict)


def pictures(connection: Connection, unit_ids: list[int]) -> Pictures:
    if not unit_ids:
        return Pictures({}, {})
    images = {unit_id: urls.blob(key) for unit_id, key in connection.execute(queries.thumbnails, {"ids": unit_ids})}
    missing = [unit_id for unit_id in unit_ids if unit_id not in images]
    placeholders = {
        unit_id: urls.blob(key) for unit_id, key in connection.execute(queries.top_crops, {"ids": missing})
    } if missing else {}
    concepts = dict(connection.execute(queries.top_labels, {"ids": unit_ids}).all())
    return Pictures(images, placeholders, concepts)


def unit_ref(catalog: Catalog, unit_id: int, shown: Pictures) -> UnitRef:
    """A unit as grids, circuits, search and probes show it, its picture from ``shown`` (`pictures`)."""
    model, layer, index = catalog.units[unit_id]
    label = catalog.models[model].layer(layer).labels[index]
    return UnitRef(model, layer, index, label, urls.unit(model, layer, index), shown.images.get(unit_id),
                   shown.placeholders.get(unit_id), shown.concepts.get(unit_id))
