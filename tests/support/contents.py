"""A store's results by natural keys, to compare two stores (row ids and run ids may differ)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import InstrumentedAttribute

from app.core.settings import Settings
from app.core.store import (Ablation, Artifact, DatasetExample, DatasetImage, DirectionWeight, Edge, Factorization, Layer, Probe, ProbeAttribution,
                       ProbeGroup, ProbeRender, ProbeUnit, Store, Unit, UnitMixture, UnitStats, UnitTuning)
from app.core.store.maintenance import referenced_keys


def contents(settings: Settings) -> dict[str, list[tuple]]:
    with Store.open(settings, readonly=True) as store, store.engine.connect() as connection:
        names = {unit_id: (layer, index) for unit_id, layer, index in connection.execute(
            select(Unit.id, Layer.name, Unit.index).join(Layer))}
        edges = sorted((names[s], names[t], kind, round(w, 5), round(n, 5), key) for s, t, kind, w, n, key in connection.execute(
            select(Edge.source_id, Edge.target_id, Edge.kind, Edge.weight, Edge.norm, Edge.kernel_key)))
        examples = sorted((names[u], kind, rank, path, y, x, key) for u, kind, rank, path, y, x, key in connection.execute(
            select(DatasetExample.unit_id, DatasetExample.kind, DatasetExample.rank, DatasetImage.path,
                   DatasetExample.y, DatasetExample.x, DatasetExample.crop_key).join(DatasetImage)))
        images = sorted(tuple(row) for row in connection.execute(
            select(DatasetImage.path, DatasetImage.sha256, DatasetImage.width, DatasetImage.height, DatasetImage.thumbnail_key)))
        stats = sorted((names[u], n, round(m, 3), round(a, 4), tuple(h)) for u, n, m, a, h in connection.execute(
            select(UnitStats.unit_id, UnitStats.images, UnitStats.mean_max, UnitStats.active_fraction, UnitStats.histogram)))
        artifacts = sorted((names[u], technique, key) for u, technique, key in connection.execute(
            select(Artifact.unit_id, Artifact.technique, Artifact.blob_key)))
        probes = sorted((sha, key, width, height, str(classes)) for sha, key, width, height, classes in connection.execute(
            select(Probe.sha256, Probe.image_key, Probe.width, Probe.height, Probe.classes)))
        probe_units = sorted((sha, names[u], rank, round(a, 3), y, x, key) for sha, u, rank, a, y, x, key in connection.execute(
            select(Probe.sha256, ProbeUnit.unit_id, ProbeUnit.rank, ProbeUnit.activation, ProbeUnit.y, ProbeUnit.x,
                   ProbeUnit.heatmap_key).join(Probe, ProbeUnit.probe_id == Probe.id)))
        groups = sorted((sha, layer, group, round(share, 3), key) for sha, layer, group, share, key in connection.execute(
            select(Probe.sha256, Layer.name, ProbeGroup.group, ProbeGroup.share, ProbeGroup.heatmap_key)
            .join(Probe, ProbeGroup.probe_id == Probe.id).join(Layer, ProbeGroup.layer_id == Layer.id)))
        renders = sorted((sha, layer, kind, index, key) for sha, layer, kind, index, key in connection.execute(
            select(Probe.sha256, Layer.name, ProbeRender.kind, ProbeRender.index, ProbeRender.image_key)
            .join(Probe, ProbeRender.probe_id == Probe.id).join(Layer, ProbeRender.layer_id == Layer.id)))
        maps = sorted((sha, names[u], method, at, key) for sha, u, method, at, key in connection.execute(
            select(Probe.sha256, ProbeAttribution.unit_id, ProbeAttribution.method, ProbeAttribution.at,
                   ProbeAttribution.heatmap_key).join(Probe, ProbeAttribution.probe_id == Probe.id)))
        ablations = sorted((key, mode, str({k: v for k, v in figures.items() if k != "seconds"})) for key, mode, figures
                           in connection.execute(select(Ablation.key, Ablation.mode, Ablation.figures)))
        tuning = sorted((names[u], family, str(preferred), round(selectivity, 3)) for u, family, preferred, selectivity
                        in connection.execute(select(UnitTuning.unit_id, UnitTuning.family, UnitTuning.preferred,
                                                     UnitTuning.selectivity)))
        layers = {layer_id: name for layer_id, name in connection.execute(select(Layer.id, Layer.name))}
        factorizations = sorted((layers[layer], method, components, key, str(figures)) for layer, method, components, key, figures
                                in connection.execute(select(Factorization.layer_id, Factorization.method,
                                                             Factorization.components, Factorization.blob_key,
                                                             Factorization.figures)))
        weights = sorted((names[d], names[u], round(w, 4), a, b) for d, u, w, a, b in connection.execute(
            select(DirectionWeight.direction_id, DirectionWeight.unit_id, DirectionWeight.weight,
                   DirectionWeight.in_direction, DirectionWeight.in_unit)))
        mixtures = sorted((names[u], features, round(effective, 2)) for u, features, effective in connection.execute(
            select(UnitMixture.unit_id, UnitMixture.features, UnitMixture.effective)))
        referenced = referenced_keys(connection)
        blobs = store.blobs.keys()
    return {"units": sorted(names.values()), "edges": edges, "examples": examples, "images": images, "stats": stats,
            "artifacts": artifacts, "probes": probes, "probe_units": probe_units, "probe_groups": groups,
            "probe_renders": renders, "probe_attributions": maps, "ablations": ablations, "tuning": tuning, "factorizations": factorizations,
            "direction_weights": weights, "mixtures": mixtures, "referenced": sorted(referenced), "blobs": sorted(blobs)}


def stored_examples(settings: Settings, image: InstrumentedAttribute = DatasetImage.path) -> list[tuple]:
    """Every example by unit and rank, its image named by ``image`` (its path, or its content's digest)."""
    with Store.open(settings, readonly=True) as store, store.session() as session:
        query = (
            select(Layer.name, Unit.index, DatasetExample.kind, DatasetExample.rank, image,
                   DatasetExample.activation, DatasetExample.y, DatasetExample.x, DatasetExample.crop_key)
            .join(Unit, DatasetExample.unit_id == Unit.id).join(Layer, Unit.layer_id == Layer.id)
            .join(DatasetImage, DatasetExample.image_id == DatasetImage.id)
            .order_by(Layer.name, Unit.index, DatasetExample.kind, DatasetExample.rank)
        )
        return [tuple(row) for row in session.execute(query)]
