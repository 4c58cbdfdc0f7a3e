"""A layer pair's modules on the layer page (issue 22): its units clustered by the weights between them."""

from __future__ import annotations

from sqlalchemy import Connection

from app import queries, urls
from app.catalog import Catalog, ModelEntry
from app.page_types import Module, ModulesSection
from app.refs import pictures, unit_ref

#: Units shown per module (the rest are counted), module pairs listed by the weight between them.
UNITS_SHOWN = 16
BETWEEN_SHOWN = 5


def modules_sections(catalog: Catalog, connection: Connection, model: ModelEntry, layer_id: int) -> list[ModulesSection]:
    """The modules of each stored pair the layer is in (with the layer before it, and with the one after)."""
    names = {layer.id: layer for layer in model.layers}
    sections = []
    for source_id, target_id, ncut, shuffled, better, modules, between, recipe, z, control, verdict in connection.execute(
            queries.layer_modules, {"layer": layer_id}):
        source, target = names.get(source_id), names.get(target_id)
        if source is None or target is None:
            continue
        wanted = {(name, index) for module in modules for name, indices in module["units"].items()
                  for index in indices[:UNITS_SHOWN]}
        ids = {(name, index): model.layer(name).unit_ids[index] for name, index in wanted
               if index < model.layer(name).channels}
        shown = pictures(connection, list(ids.values()))
        views = []
        for number, module in enumerate(modules):
            members = [(name, index) for name, indices in module["units"].items() for index in indices]
            refs = [unit_ref(catalog, ids[member], shown) for member in members[:UNITS_SHOWN] if member in ids]
            edges = [{"source": urls.unit(model.name, source.name, s), "target": urls.unit(model.name, target.name, t),
                      "label": f"{source.name}:{s} → {target.name}:{t}", "norm": norm}
                     for s, t, norm in module["edges"][:3]]
            views.append(Module(number, refs, len(members), module["inside"], edges))
        pairs = sorted(((between[a][b], a, b) for a in range(len(between)) for b in range(a + 1, len(between))),
                       reverse=True)[:BETWEEN_SHOWN]
        sections.append(ModulesSection(
            source=source.name, target=target.name, source_url=urls.layer(model.name, source.name),
            target_url=urls.layer(model.name, target.name), ncut=ncut, shuffled=shuffled,
            shuffled_mean=round(sum(shuffled) / len(shuffled), 4) if shuffled else 0.0, better=better, modules=views,
            between=[{"modules": [a, b], "weight": weight} for weight, a, b in pairs], recipe=recipe, z=z,
            control_ncut=control, verdict=verdict))
    return sections


def network_modularity(connection: Connection, model: str) -> dict | None:
    """The whole network's modularity as stored (`app.core.store.NetworkModules`), or None before it is measured."""
    row = connection.execute(queries.network_modules, {"model": model}).first()
    if row is None:
        return None
    ncut, shuffled, percentile, z, control, verdict, isolated, count = row
    return {"ncut": ncut, "shuffled_mean": round(sum(shuffled) / len(shuffled), 4), "shuffles": len(shuffled),
            "percentile": percentile, "z": z, "control_ncut": control, "verdict": verdict, "isolated": isolated,
            "modules": count, "url": urls.methods(key="modularity")}
