"""Recording each precompute run and the recipe it followed."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.errors import StoreError
from app.store import Layer, Model, Run, Unit
from app.zoo import ModelSpec


@cache
def code_version() -> str:
    """The package version plus the git commit (marked ``+dirty`` when uncommitted changes exist)."""
    try:
        version = metadata.version("neuron-microscope")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return version
    return f"{version}+g{commit}{'.dirty' if dirty else ''}"


def now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def start_run(
    session: Session,
    stage: str,
    model_id: int,
    params: dict[str, Any],
    weights_sha256: str | None = None,
    seed: int | None = None,
) -> Run:
    """Add a run row (flushed, so its id can be used) for ``stage`` with its recipe."""
    run = Run(
        stage=stage,
        model_id=model_id,
        code_version=code_version(),
        weights_sha256=weights_sha256,
        params=params,
        seed=seed,
        started_at=now(),
        finished_at=None,
    )
    session.add(run)
    session.flush()
    return run


def catalogued_model(session: Session, spec: ModelSpec) -> Model:
    """The store's row of ``spec``; a store without its catalog is a one-line error."""
    model = session.scalar(select(Model).where(Model.name == spec.name))
    if model is None:
        raise StoreError(f"the store has no catalog of {spec.name}: run `microscope precompute catalog` first")
    return model


def unit_ids(session: Session, model_id: int, layers: Iterable[str] | None = None) -> dict[tuple[str, int], int]:
    """Store ids of a model's units (of ``layers`` only, if given), by (layer name, unit index)."""
    query = select(Layer.name, Unit.index, Unit.id).join(Unit, Unit.layer_id == Layer.id).where(Layer.model_id == model_id)
    if layers is not None:
        query = query.where(Layer.name.in_(list(layers)))
    return {(name, index): unit_id for name, index, unit_id in session.execute(query)}


def finished_recipes(session: Session, stage: str) -> set[str]:
    """Recipe digests of the finished runs of ``stage``: work a rerun can skip."""
    runs = session.scalars(select(Run).where(Run.stage == stage, Run.finished_at.is_not(None)))
    return {run.params.get("recipe_sha256") for run in runs}
