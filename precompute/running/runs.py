"""The stages' shared plumbing: recipes and their digests, shards, runs, and replacing rows.

Every stage (examples, circuits, vis) reads as *select work -> compute ->
write*, and shares these parts:

- `digested`: a recipe with its ``recipe_sha256``, the digest that decides
  whether stored work is reused or redone;
- `share`: shard ``i`` of ``n`` takes items ``i, i+n, i+2n, ...`` of the full
  list of work (stored or not), so every shard sees the same numbering;
- `start_run` / `finish_run`: each run's row records its recipe (code
  version, weights checksum, seed);
- `replace_rows`: delete the selected rows and insert their new versions in
  one transaction, in chunks that stay under the databases' parameter limits;
- `progress_bar`: tqdm, or Ray's (drawn by the driver) inside a cluster task.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from collections.abc import Iterable, Iterator, Sequence, Sized
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

from tqdm import tqdm

from sqlalchemy import ColumnElement, delete, insert, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from app.core.errors import StoreError
from app.core.store import Dataset, Layer, Model, Run, Store, Unit
from app.core.zoo import ModelSpec

#: Ids per ``IN (...)`` list and rows per insert: well under SQLite's and PostgreSQL's parameter limits.
IDS_PER_DELETE = 500
ROWS_PER_INSERT = 20000

T = TypeVar("T")


@cache
def code_version() -> str:
    """The package version plus the git commit (marked ``+dirty`` when uncommitted changes exist)."""
    try:
        version = metadata.version("neuron-microscope")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    root = Path(__file__).resolve().parents[2]
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


def finish_run(session: Session, run: Run) -> None:
    """Mark ``run`` finished (in ``session``'s transaction: the run is done when its rows are)."""
    session.get(Run, run.id).finished_at = now()


def digested(params: dict[str, Any]) -> dict[str, Any]:
    """``params`` plus ``recipe_sha256``, the digest of everything in them."""
    return {**params, "recipe_sha256": hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()}


def share(items: Iterable[T], shard: tuple[int, int]) -> list[T]:
    """Shard ``i`` of ``n``'s part of ``items``: items i, i+n, i+2n, ..."""
    index, count = shard
    return [item for number, item in enumerate(items) if number % count == index]


def replace_rows(
    session: Session,
    table: type,
    key: InstrumentedAttribute,
    ids: Sequence[int],
    rows: Sequence[dict[str, Any]],
    run: Run,
    *conditions: ColumnElement[bool],
) -> None:
    """Delete ``table``'s rows whose ``key`` is in ``ids`` (and that meet ``conditions``); insert ``rows`` made by ``run``."""
    for start in range(0, len(ids), IDS_PER_DELETE):
        session.execute(delete(table).where(key.in_(ids[start:start + IDS_PER_DELETE]), *conditions))
    for start in range(0, len(rows), ROWS_PER_INSERT):
        session.execute(insert(table), [{**row, "run_id": run.id} for row in rows[start:start + ROWS_PER_INSERT]])


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


#: Set in a Ray task's process (`precompute.running.cluster`), where bars are drawn by the driver.
_REMOTE_PROGRESS: list[bool] = [False]


def report_progress_to_driver() -> None:
    """Bars made after this call go to the Ray driver (``ray.experimental.tqdm_ray``)."""
    _REMOTE_PROGRESS[0] = True


def progress_bar(iterable: Iterable[T] | None = None, *, desc: str, unit: str, total: int | None = None,
                 initial: int = 0, enabled: bool = True) -> Any:
    """A progress bar over ``iterable`` (or updated by hand): tqdm, or in a Ray task one the driver draws."""
    if _REMOTE_PROGRESS[0] and enabled:
        from ray.experimental.tqdm_ray import tqdm as driver_tqdm

        bar = driver_tqdm(desc=desc, total=total if iterable is None else _length(iterable, total), unit=unit)
        bar.update(initial)
        return bar if iterable is None else _counted(iterable, bar)
    return tqdm(iterable, desc=desc, total=total, unit=unit, initial=initial, disable=not enabled, smoothing=0.1)


def _length(iterable: Iterable[Any], total: int | None) -> int | None:
    return total if total is not None else len(iterable) if isinstance(iterable, Sized) else None


def _counted(iterable: Iterable[T], bar: Any) -> Iterator[T]:
    """``iterable``'s items, counted on ``bar``, which is closed (its last count sent) at the end."""
    try:
        for item in iterable:
            yield item
            bar.update(1)
    finally:
        bar.close()


def stored_dataset_root(store: Store) -> Path | None:
    """The folder of the latest dataset the examples stage read, where it is still there (the worker's images)."""
    with store.session() as session:
        dataset = session.scalars(select(Dataset).order_by(Dataset.id.desc())).first()
        root = Path(dataset.root) if dataset is not None else None
    return root if root is not None and root.exists() else None
