"""The live side's pages: a unit's render status and a probe's result, built from the store and the queue."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from app import queries, urls
from app.access import allows
from app.refs import pictures, unit_ref
from app.catalog import Catalog
from app.errors import NotFound
from app.jobs import JobQueue, JobState
from app.page_types import ProbedLayer, ProbedUnit, ProbePage, RenderStatus
from app.state import ServerState

#: Seconds between status polls while a worker is on it, and while none is running.
POLL_SECONDS = 1
POLL_IDLE_SECONDS = 5


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
    if job.state == "none":
        message = "Not queued."
    elif job.state == "running":
        message = "Rendering now; the picture appears here when it is done."
    elif job.state == "failed":
        message = f"Rendering failed: {job.message}"
    else:
        message = f"Queued for rendering: {job.position} of {job.pending} waiting."
    if not workers:
        message += f" No worker is running, so nothing will render until one starts: {worker_command(state)}"
    poll = (POLL_SECONDS if workers else POLL_IDLE_SECONDS) if job.state not in ("none", "failed") else None
    return RenderStatus(ref, job.state, job.position, job.pending, workers, message, status_url, poll)



class ProbeGone(NotFound):
    """Its owner deleted it (the worker is removing it, or has)."""

    status_code = 410



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
        if job.state == "none":
            raise NotFound(f"no probe {probe_id!r} of {model}: upload the image at {urls.probe_form(model)}")
        workers = len(queue.live_workers()) if queue is not None else 0
        if job.state == "failed":
            return ProbePage(**base, state="failed", message=f"The probe failed: {job.message}", poll=None)
        message = ("The network is looking at your image." if job.state == "running"
                   else f"Queued: {job.position} of {job.pending} waiting.")
        if not workers:
            message += f" No worker is running, so nothing will happen until one starts: {worker_command(state)}"
        return ProbePage(**base, state=job.state, message=message, poll=POLL_SECONDS if workers else POLL_IDLE_SECONDS)
    probe = row
    logits = next((layer.name for layer in entry.layers if layer.kind == "logits"), None)
    classes = [{**c, "url": urls.unit(model, logits, c["index"]) if logits else None} for c in probe.classes]
    rows = connection.execute(queries.probe_units, {"probe": probe.id}).all()
    shown = pictures(connection, [row[0] for row in rows])
    by_layer: dict[str, list[ProbedUnit]] = {}
    for unit_id, rank, activation, y, x, key in rows:
        ref = unit_ref(catalog, unit_id, shown)
        heatmap = urls.probe_image(model, probe_id, key)
        by_layer.setdefault(ref.layer, []).append(ProbedUnit(ref, rank, activation, y, x, heatmap))
    layers = [ProbedLayer(layer.name, urls.layer(model, layer.name), sorted(by_layer[layer.name], key=lambda u: u.rank))
              for layer in entry.layers if layer.name in by_layer]
    return ProbePage(**base, state="done", message="done", poll=None, sha256=probe.sha256,
                     image_url=urls.probe_image(model, probe_id, probe.image_key), width=probe.width,
                     height=probe.height, created_at=probe.created_at, classes=classes, layers=layers,
                     recipe=probe.recipe)



def stored_probe(connection: Connection, model: str, *, sha256: str | None = None, public_id: str | None = None) -> Any:
    """The stored probe's row (by the image's digest, or by its id), or None."""
    if sha256 is not None:
        return connection.execute(queries.probe_by_sha256, {"model": model, "sha256": sha256}).first()
    return connection.execute(queries.probe_by_id, {"model": model, "public_id": public_id}).first()
