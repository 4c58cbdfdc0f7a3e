"""What a store holds, per model, layer and technique (``microscope info``, coverage on pages)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.store.schema import Artifact, Model, Run, Unit, UnitStats


@dataclass(frozen=True)
class LayerCoverage:
    name: str
    kind: str
    channels: int
    #: Units with an image, per feature-visualization technique.
    rendered: dict[str, int] = field(default_factory=dict)
    #: Units with dataset examples.
    with_examples: int = 0
    #: Units with their incoming circuit edges computed.
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
    """Counts for every model and layer in the store, in network order, in a few small queries."""
    rendered: dict[int, dict[str, int]] = defaultdict(dict)
    for layer_id, technique, count in session.execute(
        select(Unit.layer_id, Artifact.technique, func.count())
        .join(Artifact, Artifact.unit_id == Unit.id)
        .group_by(Unit.layer_id, Artifact.technique)
    ):
        rendered[layer_id][technique] = count
    # A unit has examples exactly when it has statistics (one row per unit, not forty).
    examples = dict(
        session.execute(
            select(Unit.layer_id, func.count()).join(UnitStats, UnitStats.unit_id == Unit.id).group_by(Unit.layer_id)
        ).all()
    )
    # The circuits stage gives every unit of a pair's target layer its inputs, one run per pair.
    circuit_layers = {
        (run.model_id, run.params.get("target"))
        for run in session.scalars(select(Run).where(Run.stage == "circuits", Run.finished_at.is_not(None)))
    }
    models = []
    for model in session.scalars(select(Model).order_by(Model.name)):
        layers = [
            LayerCoverage(
                name=layer.name, kind=layer.kind, channels=layer.channels,
                rendered=dict(sorted(rendered[layer.id].items())),
                with_examples=examples.get(layer.id, 0),
                with_circuits=layer.channels if (model.id, layer.name) in circuit_layers else 0,
            )
            for layer in model.layers
        ]
        models.append(ModelCoverage(model.name, model.title, layers))
    return models
