"""What a store holds, per model, layer and technique (``microscope info``, coverage on pages)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import distinct, func, select
from sqlalchemy.orm import Session

from app.store.schema import Artifact, DatasetExample, Edge, Layer, Model, Unit


@dataclass(frozen=True)
class LayerCoverage:
    name: str
    kind: str
    channels: int
    #: Units with an image, per feature-visualization technique.
    rendered: dict[str, int] = field(default_factory=dict)
    #: Units with dataset examples.
    with_examples: int = 0
    #: Units with at least one incoming circuit edge.
    with_circuits: int = 0


@dataclass(frozen=True)
class ModelCoverage:
    name: str
    title: str
    layers: list[LayerCoverage]

    @property
    def units(self) -> int:
        return sum(layer.channels for layer in self.layers)


def coverage(session: Session) -> list[ModelCoverage]:
    """Counts for every model and layer in the store, in network order, in four queries."""
    rendered: dict[int, dict[str, int]] = defaultdict(dict)
    for layer_id, technique, count in session.execute(
        select(Unit.layer_id, Artifact.technique, func.count())
        .join(Artifact, Artifact.unit_id == Unit.id)
        .group_by(Unit.layer_id, Artifact.technique)
    ):
        rendered[layer_id][technique] = count
    examples = dict(
        session.execute(
            select(Unit.layer_id, func.count(distinct(DatasetExample.unit_id)))
            .join(DatasetExample, DatasetExample.unit_id == Unit.id)
            .group_by(Unit.layer_id)
        ).all()
    )
    circuits = dict(
        session.execute(
            select(Unit.layer_id, func.count(distinct(Edge.target_id)))
            .join(Edge, Edge.target_id == Unit.id)
            .group_by(Unit.layer_id)
        ).all()
    )
    models = []
    for model in session.scalars(select(Model).order_by(Model.name)):
        layers = [
            LayerCoverage(
                name=layer.name, kind=layer.kind, channels=layer.channels,
                rendered=dict(sorted(rendered[layer.id].items())),
                with_examples=examples.get(layer.id, 0), with_circuits=circuits.get(layer.id, 0),
            )
            for layer in model.layers
        ]
        models.append(ModelCoverage(model.name, model.title, layers))
    return models
