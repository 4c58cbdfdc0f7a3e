"""The store's catalog (models, layers, units) held in memory by the server.

The catalog changes only when ``microscope precompute catalog`` runs, so the
server reads it once (and again when asked for a model it does not know) and
resolves every path against it without a query. Misses raise the typed
errors with the nearest valid names.
"""

from __future__ import annotations

import difflib
from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import Connection, select

from app.core.errors import ModelNotHeld, UnitNotFound, UnknownLayer, UnknownModel
from app.core.zoo.registry import REGISTRY
from app.core.store import Layer, Model, Unit
from app.core.zoo.spec import position_box


@dataclass(frozen=True)
class LayerEntry:
    id: int
    model: str
    name: str
    kind: str
    channels: int
    position: int
    #: Store ids of the layer's units, by unit index.
    unit_ids: tuple[int, ...]
    labels: tuple[str | None, ...]
    #: Geometry as the catalog stage stored it (the store is the server's one source of it).
    stride: int
    receptive_field: int
    #: None in a store upgraded from schema 2 until `microscope precompute catalog` runs again.
    offset: int | None
    #: Layers this one reads; a mixed layer's are its branches, concatenated in order.
    inputs: tuple[str, ...]
    block: str | None
    #: Stage → why it leaves this layer out (`app.core.zoo.skips.layer_skips`, as the catalog stage stored it).
    skips: dict[str, str] = field(default_factory=dict, compare=False)

    def unit_id(self, index: int) -> int:
        if not 0 <= index < self.channels:
            raise UnitNotFound(self.model, self.name, index, self.channels)
        return self.unit_ids[index]

    def position_box(self, y: int, x: int, image_size: int) -> tuple[int, int, int, int]:
        """The input pixels position (y, x) sees; the whole image where the store lacks the offset."""
        if self.offset is None:
            return 0, 0, image_size, image_size
        return position_box(self.offset, self.stride, self.receptive_field, y, x, image_size)


@dataclass(frozen=True)
class ModelEntry:
    id: int
    name: str
    title: str
    description: str
    input_size: int
    layers: tuple[LayerEntry, ...]
    #: Input channels (None in a store made before schema 12) and what the network gets none of (`model_skips`).
    channels: int | None = None
    skips: dict[str, str] = field(default_factory=dict, compare=False)
    by_name: dict[str, LayerEntry] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        self.by_name.update((entry.name, entry) for entry in self.layers)

    def layer(self, name: str) -> LayerEntry:
        if name in self.by_name:
            return self.by_name[name]
        names = [entry.name for entry in self.layers]
        raise UnknownLayer(self.name, name, tuple(difflib.get_close_matches(name, names, n=3, cutoff=0.5)))

    def field_layer(self, layer: LayerEntry, unit: int) -> LayerEntry:
        """The layer whose receptive field a unit has: a mixed layer's unit has its branch's."""
        if layer.kind != "mixed":
            return layer
        for name, start in self.concatenated(layer):
            branch = self.layer(name)
            if start <= unit < start + branch.channels:
                return branch
        raise UnitNotFound(self.name, layer.name, unit, layer.channels)

    def concatenated(self, layer: LayerEntry) -> list[tuple[str, int]]:
        """(branch, first unit) of each part of a mixed layer."""
        parts, start = [], 0
        for name in layer.inputs:
            parts.append((name, start))
            start += self.layer(name).channels
        return parts

    @property
    def units(self) -> int:
        return sum(layer.channels for layer in self.layers)


@dataclass
class Catalog:
    models: dict[str, ModelEntry] = field(default_factory=dict)
    #: unit id -> (model, layer, index)
    units: dict[int, tuple[str, str, int]] = field(default_factory=dict)
    #: lower-cased label -> units carrying it
    labels: dict[str, list[tuple[str, str, int]]] = field(default_factory=lambda: defaultdict(list))

    @classmethod
    def load(cls, connection: Connection) -> Catalog:
        catalog = cls()
        unit_rows: dict[int, list[tuple[int, int, str | None]]] = defaultdict(list)
        for layer_id, index, unit_id, label in connection.execute(
            select(Unit.layer_id, Unit.index, Unit.id, Unit.label).order_by(Unit.layer_id, Unit.index)
        ):
            unit_rows[layer_id].append((index, unit_id, label))
        layers_by_model: dict[int, list[LayerEntry]] = defaultdict(list)
        model_rows = connection.execute(select(Model)).mappings().all()
        model_by_id = {row["id"]: row["name"] for row in model_rows}
        for row in connection.execute(select(Layer).order_by(Layer.model_id, Layer.position)).mappings():
            units = unit_rows[row["id"]]
            model_name = model_by_id[row["model_id"]]
            entry = LayerEntry(
                id=row["id"], model=model_name, name=row["name"], kind=row["kind"], channels=row["channels"],
                position=row["position"], unit_ids=tuple(u for _, u, _ in units), labels=tuple(lb for _, _, lb in units),
                stride=row["stride"], receptive_field=row["receptive_field"], offset=row["field_offset"],
                inputs=tuple(row["inputs"]), block=row["block"], skips=row["skips"] or {},
            )
            layers_by_model[row["model_id"]].append(entry)
            for index, unit_id, label in units:
                catalog.units[unit_id] = (model_name, entry.name, index)
                if label:
                    catalog.labels[label.lower()].append((model_name, entry.name, index))
        for row in model_rows:
            catalog.models[row["name"]] = ModelEntry(
                id=row["id"], name=row["name"], title=row["title"], description=row["description"],
                input_size=row["input_size"], layers=tuple(layers_by_model[row["id"]]),
                channels=row["channels"], skips=row["skips"] or {},
            )
        return catalog

    def model(self, name: str) -> ModelEntry:
        try:
            return self.models[name]
        except KeyError:
            if name in REGISTRY:  # a model people link to (inceptionv1 from the literature) that is not here
                raise ModelNotHeld(name, tuple(self.models)) from None
            raise UnknownModel(name, tuple(difflib.get_close_matches(name, list(self.models), n=3))) from None
