"""The live side's pages: a unit's render status and a probe's result, built from the store and the queue."""

from __future__ import annotations

from sqlalchemy import Connection

from app import queries, urls
from app.access import allows
from app.attribution import probe_attributions
from app.refs import pictures, unit_ref
from app.catalog import Catalog
from app.core import contracts
from app.core.contracts import hex_colour
from app.core.errors import NotFound
from app.core.jobs import JobQueue, JobState
from app.page_types import ContributionsStatus, Contributor, GroupRender, ProbedGroup, ProbedLayer, ProbedUnit, ProbePage, RenderStatus, Weighted
from app.probes import ProbeGone, live_probe, stored_probe
from app.state import ServerState
from app.status import job_status
from app.core.store.algorithms import is_stale

#: Seconds between status polls while a worker is on it, and while none is running.
#: The colours of a probe's neuron groups' maps, in order of share (the maps' own, `app.core.contracts`).
GROUP_COLOURS = tuple(hex_colour(rgb) for rgb in contracts.GROUP_COLOURS)
#: Units listed per neuron group.
GROUP_UNITS = 5


def worker_command(state: ServerState) -> str:
    return f"microscope worker --data {state.store.settings.data_dir} --fill"



def render_status_page(state: ServerState, connection: Connection, catalog: Catalog, model: str, layer: str, index: int,
                   job: JobState | None = None) -> RenderStatus:
    unit_id = catalog.model(model).layer(layer).unit_id(index)
    ref = unit_ref(catalog, unit_id, pictures(connection, [unit_id]))
    status_url = urls.render(model, layer, index)
    queue = state.queue()
    if ref.image_url is not None:
        return RenderStatus(ref, "rendered", None, 0, 0, "rendered", status_url, None)
    if queue is None:
        return RenderStatus(ref, "off", None, 0, 0, "Rendering on demand is off: the server has no job queue "
                            "(its store directory is read-only; set MICROSCOPE_QUEUE).", status_url, None)
    job = job or queue.state(JobQueue.render_key(model, layer, [index]))
    workers = len(queue.live_workers())
    status = job_status(job, workers, "Rendering now; the picture appears here when it is done.", what="for rendering",
                        idle="Not queued.", no_worker=worker_command(state))
    return RenderStatus(ref, job.state, job.position, job.pending, workers, status.message, status_url, status.poll)


def probe_page(state: ServerState, connection: Connection, catalog: Catalog, model: str, probe_id: str) -> ProbePage:
    entry = catalog.model(model)
    queue = state.queue()
    if queue is not None and queue.forgotten(probe_id):
        raise ProbeGone(f"the probe {probe_id} was deleted")
    base = {"model": model, "id": probe_id, "url": urls.probe(model, probe_id), "json_url": urls.probe(model, probe_id, True),
            "status_url": urls.probe_status(model, probe_id), "title": f"{model}: probe {probe_id[:8]}",
            "delete_url": urls.probe_delete(model, probe_id) if allows(state.settings, "probes") else None}
    row = stored_probe(connection, model, public_id=probe_id)
    if row is None:
        key = queue.probe_of(probe_id) if queue is not None else None
        job = queue.state(key) if queue is not None and key is not None else JobState("none")
        if job.state == "none" and key is None:
            raise NotFound(f"no probe {probe_id!r} of {model}: upload the image at {urls.probe_form(model)}")
        if job.state == "none":  # its id is known and no result is stored: a worker is just taking it (or lost it)
            job = JobState("running")
        workers = len(queue.live_workers()) if queue is not None else 0
        status = job_status(job, workers, "The network is looking at your image.", no_worker=worker_command(state))
        return ProbePage(**base, state=job.state, message=status.message, poll=status.poll)
    probe = row
    logits = next((layer.name for layer in entry.layers if layer.kind == "logits"), None)
    classes = [{**c, "url": urls.unit(model, logits, c["index"]) if logits else None,
                "attribution_url": urls.probe_attribution(model, probe_id, logits, c["index"]) if logits else None}
               for c in probe.classes]
    rows = connection.execute(queries.probe_units, {"probe": probe.id}).all()
    contributor_ids = {(c["layer"], c["unit"]): entry.layer(c["layer"]).unit_id(c["unit"])
                       for row in rows for c in (row.contributions or [])}
    shown = pictures(connection, [row.unit_id for row in rows] + list(contributor_ids.values()))
    by_layer: dict[str, list[ProbedUnit]] = {}
    for unit_id, rank, activation, y, x, key, found in rows:
        ref = unit_ref(catalog, unit_id, shown)
        heatmap = urls.probe_image(model, probe_id, key)
        contributors = None if found is None else [
            Contributor(unit_ref(catalog, contributor_ids[c["layer"], c["unit"]], shown), c["share"], c["y"], c["x"])
            for c in found]
        by_layer.setdefault(ref.layer, []).append(ProbedUnit(ref, rank, activation, y, x, heatmap,
                                                             urls.probe_attribution(model, probe_id, ref.layer, ref.index),
                                                             contributors))
    groups = _groups(state, connection, catalog, model, probe_id, probe.id)
    ablated = {name: [{**c, "url": urls.unit(model, logits, c["index"]) if logits else None} for c in found]
               for name, found in connection.execute(queries.probe_ablations, {"probe": probe.id})}
    caricatures = _caricatures(connection, probe.id)
    queue = state.queue()
    layers = [ProbedLayer(layer.name, urls.layer(model, layer.name), sorted(by_layer[layer.name], key=lambda u: u.rank),
                          *groups.get(layer.name, ([], None)), ablated.get(layer.name, []),
                          _group_render(state, queue, model, probe_id, layer.name, 0, caricatures.get(layer.name),
                                        picture="caricature"),
                          _contributions(state, queue, model, probe_id, layer.name, by_layer[layer.name])
                          if number else None)
              for number, layer in enumerate([shown for shown in entry.layers if shown.name in by_layer])]

    cam_layers = [layer.name for layer in entry.layers if layer.name in by_layer]  # the layers with a map
    return ProbePage(**base, state="done", message="done", poll=None, sha256=probe.sha256,
                     image_url=urls.probe_image(model, probe_id, probe.image_key), width=probe.width,
                     height=probe.height, created_at=probe.created_at, classes=classes, layers=layers,
                     recipe=probe.recipe, attributions=probe_attributions(state, connection, catalog, model, probe_id, probe),
                     cam_layers=cam_layers)



def _groups(state: ServerState, connection: Connection, catalog: Catalog, model: str, probe_id: str,
            row_id: int) -> dict[str, tuple[list[ProbedGroup], float]]:
    """A stored probe's neuron groups by layer, with their fits and their pictures' states."""
    rows = connection.execute(queries.probe_groups, {"probe": row_id}).all()
    renders = {(layer, index): (key, objective, recipe)
               for layer, kind, index, key, objective, recipe in connection.execute(queries.probe_renders, {"probe": row_id})
               if kind == "group"}
    tops = {}
    for layer, group, _, _, vector, _, _ in rows:
        order = sorted(range(len(vector)), key=lambda unit: -vector[unit])[:GROUP_UNITS]
        tops[layer, group] = [(catalog.model(model).layer(layer).unit_id(unit), vector[unit]) for unit in order
                              if vector[unit] > 0]
    shown = pictures(connection, [unit_id for top in tops.values() for unit_id, _ in top])
    queue = state.queue()
    out: dict[str, tuple[list[ProbedGroup], float]] = {}
    for layer, group, share, fvu, _, heatmap_key, _ in rows:
        render = _group_render(state, queue, model, probe_id, layer, group, renders.get((layer, group)))
        units = [Weighted(unit_ref(catalog, unit_id, shown), round(weight, 4)) for unit_id, weight in tops[layer, group]]
        entry = ProbedGroup(group, GROUP_COLOURS[group % len(GROUP_COLOURS)], share,
                            urls.probe_image(model, probe_id, heatmap_key), units, render)
        out.setdefault(layer, ([], fvu))[0].append(entry)
    return out


def _group_render(state: ServerState, queue: JobQueue | None, model: str, probe_id: str, layer: str, group: int,
                  stored: tuple | None, job: JobState | None = None, picture: str = "group") -> GroupRender:
    status_url = (urls.probe_group_render(model, probe_id, layer, group) if picture == "group"
                  else urls.probe_caricature(model, probe_id, layer))
    if stored is not None:
        key, objective, recipe = stored
        return GroupRender(layer, group, "rendered", "rendered", status_url, urls.probe_image(model, probe_id, key),
                           objective, recipe, picture=picture)
    if queue is None:
        return GroupRender(layer, group, "off", "Rendering on demand is off: the server has no job queue.", status_url,
                           picture=picture)
    job = job or queue.state(JobQueue.probe_render_key(model, probe_id, layer, picture, group))
    status = job_status(job, len(queue.live_workers()), "Rendering now.", idle="Not rendered.",
                        no_worker=worker_command(state))
    return GroupRender(layer, group, job.state, status.message, status_url, poll=status.poll, picture=picture)


def _contributions(state: ServerState, queue: JobQueue | None, model: str, probe_id: str, layer: str,
                   units: list[ProbedUnit], job: JobState | None = None) -> ContributionsStatus:
    url = urls.probe_contributions(model, probe_id, layer)
    if units and all(unit.contributions is not None for unit in units):
        return ContributionsStatus(layer, "done", "done", url)
    if queue is None:
        return ContributionsStatus(layer, "off", "Attribution on demand is off: the server has no job queue.", url)
    job = job or queue.state(JobQueue.probe_render_key(model, probe_id, layer, "contributions", 0))
    status = job_status(job, len(queue.live_workers()), "Attributing now.", no_worker=worker_command(state))
    return ContributionsStatus(layer, job.state, status.message, url, status.poll)


def contributions_page(state: ServerState, connection: Connection, catalog: Catalog, model: str, probe_id: str,
                       layer: str, job: JobState | None = None) -> ContributionsStatus:
    """Where the spatial attribution of a stored probe's units of ``layer`` stands."""
    page = probe_page(state, connection, catalog, model, probe_id)
    found = next((probed for probed in page.layers if probed.name == layer), None)
    if found is None or found.contributions is None:
        raise NotFound(f"the probe {probe_id} has no units of {layer!r} with a layer before them")
    return found.contributions if job is None else _contributions(state, state.queue(), model, probe_id, layer,
                                                                   found.units, job)


def caricature_page(state: ServerState, connection: Connection, catalog: Catalog, model: str, probe_id: str,
                    layer: str, job: JobState | None = None) -> GroupRender:
    """Where a stored probe's caricature at ``layer`` stands."""
    catalog.model(model).layer(layer)
    queue = state.queue()
    row = live_probe(state, connection, model, probe_id)
    if layer not in {name for name, *_ in connection.execute(queries.probe_groups, {"probe": row.id})} and not any(
            catalog.units[unit_id][1] == layer for unit_id, *_ in connection.execute(queries.probe_units, {"probe": row.id})):
        raise NotFound(f"the probe {probe_id} shows no layer {layer!r}")
    return _group_render(state, queue, model, probe_id, layer, 0, _caricatures(connection, row.id).get(layer), job,
                         picture="caricature")


def _caricatures(connection: Connection, row_id: int) -> dict[str, tuple]:
    return {layer: (key, objective, recipe) for layer, kind, _, key, objective, recipe
            in connection.execute(queries.probe_renders, {"probe": row_id})
            if kind == "caricature" and not is_stale("caricature", recipe)}


def group_render_page(state: ServerState, connection: Connection, catalog: Catalog, model: str, probe_id: str,
                      layer: str, group: int, job: JobState | None = None) -> GroupRender:
    """Where the picture of one of a stored probe's neuron groups stands."""
    catalog.model(model).layer(layer)
    queue = state.queue()
    row = live_probe(state, connection, model, probe_id)
    found = [r for r in connection.execute(queries.probe_groups, {"probe": row.id}) if r[0] == layer and r[1] == group]
    if not found:
        raise NotFound(f"the probe {probe_id} has no neuron group {group} in {layer}")
    stored = next(((key, objective, recipe) for name, kind, index, key, objective, recipe
                   in connection.execute(queries.probe_renders, {"probe": row.id})
                   if (name, kind, index) == (layer, "group", group)), None)
    return _group_render(state, queue, model, probe_id, layer, group, stored, job)
