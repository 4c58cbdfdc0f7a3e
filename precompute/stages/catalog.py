"""The catalog stage: the model, layer and unit rows every other stage hangs its results on."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.core.errors import StoreError
from app.core.store import Layer, Model, Store, Unit
from app.core.zoo import LayerSpec, ModelSpec
from app.core.zoo.skips import layer_skips, model_skips
from precompute.running.runs import now, start_run
from precompute.models.weight_files import Checksums


@dataclass(frozen=True)
class CatalogResult:
    model: str
    layers_added: int
    units_added: int


def catalog(store: Store, spec: ModelSpec, shard: tuple[int, int] = (0, 1), weights_sha256: str | None = None) -> CatalogResult:
    """Write ``spec``'s rows in one transaction; running it again adds nothing.

    Shard i of n writes the layers i, i+n, ... (and the model row, whichever
    shard comes first; a shard that loses that race retries). A store whose
    rows disagree with the spec (another version's layers) is refused, and
    left as it was.
    """
    if weights_sha256 is None and spec.weights is not None:  # a pinned checksum list names its weights
        weights_sha256 = Checksums.of(spec).digest
    for attempt in store.retrying(also=(IntegrityError,)):  # a lost race for the model row, or a lock
        with attempt:
            return _catalog(store, spec, weights_sha256, shard)
    raise AssertionError("unreachable: the last attempt's error is raised")


def _catalog(store: Store, spec: ModelSpec, weights: str | None, shard: tuple[int, int]) -> CatalogResult:
    index, count = shard
    with store.transaction() as session:
        model = session.scalar(select(Model).where(Model.name == spec.name))
        if model is None:
            model = Model(name=spec.name, title=spec.title, description=spec.description,
                          input_size=spec.input_size, weights_sha256=weights)
            session.add(model)
        elif weights is not None and model.weights_sha256 != weights:  # None: weights not known, nothing to check
            made = f"{model.weights_sha256[:12]}…" if model.weights_sha256 else "no recorded checksum"
            raise StoreError(f"the store's {spec.name} was made from other weights ({made})")
        model.channels, model.skips = spec.channels, model_skips(spec)  # also in a store made before they were kept
        session.flush()
        existing = {layer.name: layer for layer in session.scalars(select(Layer).where(Layer.model_id == model.id))}
        layers_added = units_added = 0
        for position, layer_spec in enumerate(spec.layers):
            if position % count != index:
                continue
            layer = existing.get(layer_spec.name)
            if layer is None:
                layer = _layer_row(model.id, position, layer_spec)
                session.add(layer)
                session.flush()
                layers_added += 1
            else:
                _check_layer(layer, layer_spec)
            layer.skips = layer_skips(layer_spec)
            units_added += _add_units(session, layer, spec, layer_spec)
        run = start_run(session, "catalog", model.id, {"layers": len(spec.layers), "shard": f"{index}/{count}"},
                        weights_sha256=weights)
        run.finished_at = now()
    return CatalogResult(spec.name, layers_added, units_added)


def _layer_row(model_id: int, position: int, spec: LayerSpec) -> Layer:
    return Layer(
        model_id=model_id, name=spec.name, position=position, kind=spec.kind, channels=spec.channels,
        size=spec.size, stride=spec.stride, receptive_field=spec.receptive_field, offset=spec.offset,
        inputs=list(spec.inputs),
        previous=spec.previous, block=spec.block,
    )


def _check_layer(layer: Layer, spec: LayerSpec) -> None:
    if (layer.kind, layer.channels, layer.size) != (spec.kind, spec.channels, spec.size):
        raise StoreError(
            f"the store's layer {layer.name} ({layer.kind}, {layer.channels} channels, {layer.size}px) "
            f"disagrees with the spec ({spec.kind}, {spec.channels} channels, {spec.size}px)"
        )
    if layer.offset is None:  # a store upgraded from schema 2
        layer.offset = spec.offset


def _add_units(session: Session, layer: Layer, model: ModelSpec, spec: LayerSpec) -> int:
    present = set(session.scalars(select(Unit.index).where(Unit.layer_id == layer.id)))
    missing = [index for index in range(spec.channels) if index not in present]
    session.add_all(Unit(layer_id=layer.id, index=index, label=model.unit_label(spec, index)) for index in missing)
    return len(missing)
