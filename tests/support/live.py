"""The live tests' helpers: a private copy of a session's store, a worker on the tiny model with tiny renders, the
rendered pictures of a layer, and the sample's JPEG files as uploads."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from sqlalchemy import select

from app.core.jobs import JobQueue
from app.core.settings import Settings
from app.core.store import Artifact, Layer, Store, Unit
from app.core.zoo import ModelSpec
from precompute.running.recipes import Defaults
from precompute.running.context import Stage
from precompute.running.worker import Worker

#: Tiny renders: the recipe machinery is the same at any size.
TINY = Defaults(steps=4, early_steps=16, size=32)
MODEL = "tiny"


#: The probe API's body: an image's bytes, named by their type.
JPEG = {"content-type": "image/jpeg"}


def copy_store(source: Settings, target: Path) -> Settings:
    """A private copy of a session's store (the live tests write to theirs)."""
    shutil.copytree(source.data_dir, target, symlinks=True, ignore=shutil.ignore_patterns("queue.sqlite3*"))
    return Settings.load(target)


def worker(store: Store, settings: Settings, spec: ModelSpec, net, **options) -> Worker:  # noqa: ANN001
    assert net.spec == spec
    options.setdefault("factor", False)  # the factors' own test turns it on (tests/test_factors.py)
    options.setdefault("defaults", TINY)
    options.setdefault("sanity", False)  # tests/test_attribution.py runs it
    options.setdefault("first_look", 0)  # test_live's first-look test turns it on
    return Worker(Stage(store, net, "w", torch.device("cpu"), progress=False), JobQueue.for_store(settings), **options)


def artifact_keys(settings: Settings, layer: str) -> dict[int, tuple[str, str]]:
    with Store.open(settings, readonly=True) as store, store.session() as session:
        rows = session.execute(
            select(Unit.index, Artifact.blob_key, Artifact.recipe_sha256).join(Unit, Artifact.unit_id == Unit.id)
            .join(Layer, Unit.layer_id == Layer.id).where(Layer.name == layer, Artifact.technique == "channel")
        )
        return {index: (key, digest) for index, key, digest in rows}


def jpeg(images: Path, number: int = 0) -> bytes:
    return sorted(images.glob("*/*.jpg"))[number].read_bytes()
