"""What a store holds, per model, layer and technique (``microscope info``, coverage on pages)."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.core.store.algorithms import is_stale
from app.core.store.schema import Artifact, Edge, Model, Run, Unit, UnitStats


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
    #: Units whose artifacts an older algorithm made, per stage ("vis", "examples", "circuits"):
    #: what a rerun of that stage (or the main job) recomputes.
    stale: dict[str, int] = field(default_factory=dict)
    #: Stage → why it leaves this layer out (`app.core.zoo.skips.layer_skips`).
    skips: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelCoverage:
    name: str
    title: str
    layers: list[LayerCoverage]
    #: Stage → why the network gets none of it (`app.core.zoo.skips.model_skips`).
    skips: dict[str, str] = field(default_factory=dict)

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
    stale = _stale(session)
    models = []
    for model in session.scalars(select(Model).order_by(Model.name)):
        layers = [
            LayerCoverage(
                name=layer.name, kind=layer.kind, channels=layer.channels,
                rendered=dict(sorted(rendered[layer.id].items())),
                with_examples=examples.get(layer.id, 0),
                with_circuits=layer.channels if (model.id, layer.name) in circuit_layers else 0,
                stale={stage: counts[layer.id] for stage, counts in stale.items() if counts.get(layer.id)},
                skips=layer.skips or {},
            )
            for layer in model.layers
        ]
        models.append(ModelCoverage(model.name, model.title, layers, model.skips or {}))
    return models


def _stale(session: Session) -> dict[str, dict[int, int]]:
    """Per stage, per layer id: units with an artifact made by an older algorithm than this code's."""
    stale: dict[str, dict[int, int]] = {"vis": defaultdict(int), "examples": defaultdict(int), "circuits": defaultdict(int)}
    for layer_id, recipe in session.execute(select(Unit.layer_id, Artifact.recipe).join(Artifact, Artifact.unit_id == Unit.id)):
        if is_stale("vis", recipe):
            stale["vis"][layer_id] += 1
    old_runs = {run.id for run in session.scalars(select(Run).where(Run.stage.in_(["examples", "circuits"])))
                if is_stale(run.stage, run.params)}
    if old_runs:
        for layer_id, count in session.execute(
            select(Unit.layer_id, func.count()).join(UnitStats, UnitStats.unit_id == Unit.id)
            .where(UnitStats.run_id.in_(old_runs)).group_by(Unit.layer_id)
        ):
            stale["examples"][layer_id] = count
        for layer_id, count in session.execute(
            select(Unit.layer_id, func.count(func.distinct(Edge.target_id))).join(Edge, Edge.target_id == Unit.id)
            .where(Edge.run_id.in_(old_runs)).group_by(Unit.layer_id)
        ):
            stale["circuits"][layer_id] = count
    return stale
