"""Recording each precompute run and the recipe it followed."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from app.store import Run


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
