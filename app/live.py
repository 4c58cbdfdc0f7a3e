"""The live side of the server: renders on demand and probes, through the job queue.

The server still never runs a model and never writes the store: it reads the
store, and writes jobs (and a probe's uploaded bytes) to the queue, where
``microscope worker`` takes them. Pages poll small status fragments (htmx)
until the worker's result is in the store.
"""

from __future__ import annotations

import hashlib

import anyio.to_thread
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import RedirectResponse, Response
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException

from app import queries, urls
from app.core.errors import MicroscopeError, NotFound
from app.access import TOKEN_COOKIE, check_origin, check_policy, client_address, guard_probes, guard_renders, token_matches
from app.core.jobs import LAYER, JobQueue, JobState, QueueFull, TooManyJobs
from app.attribution import PROBE_METHODS, attribution_status
from app.catalog import ModelEntry
from app.live_pages import caricature_page, contributions_page, group_render_page, probe_page, render_status_page, worker_command
from app.probes import stored_probe
from app.page_types import LayerRequest, LoginPage, ProbeForm
from app.respond import json_response, respond
from app.state import ServerState
from app.views import ConnectionDep, StateDep, twin
from app.core.uploads import BadUpload, TooLarge, UploadLimits, Unsupported, check_image

router = APIRouter()

#: Units per job when a whole layer is queued.
LAYER_BATCH = 8
#: Room for the multipart envelope around a form's image.
FORM_OVERHEAD = 64 * 1024


class LiveOff(MicroscopeError):
    status_code = 503


class LengthRequired(BadUpload):
    status_code = 411


# Renders on demand ---------------------------------------------------------------------------


def _require_queue(state: ServerState) -> JobQueue:
    queue = state.queue()
    if queue is None:
        raise LiveOff("the server has no job queue (its store directory is read-only): set MICROSCOPE_QUEUE")
    return queue


@twin("/models/{model}/{layer}/{unit:int}/render", "render_status", on=router)
def render_status(request: Request, model: str, layer: str, unit: int, state: StateDep, connection: ConnectionDep,
                  json: bool) -> Response:
    """Whether a unit's picture is rendered, queued (and where) or waiting for a worker."""
    catalog = state.catalog(connection, model)
    return respond(request, render_status_page(state, connection, catalog, model, layer, unit), "_render_status.html", json)


@twin("/models/{model}/{layer}/{unit:int}/render", "render_request", methods=("POST",), on=router, status_code=202,
      dependencies=[Depends(guard_renders)],
      responses={200: {"description": "Rendered already: its status"}})
def render_request(request: Request, model: str, layer: str, unit: int, state: StateDep, connection: ConnectionDep,
                   json: bool) -> Response:
    """Queue a unit's render (joining the same request if it waits already); answers its status."""
    catalog = state.catalog(connection, model)
    status = render_status_page(state, connection, catalog, model, layer, unit)
    if status.state == "none":
        job = _require_queue(state).request_render(model, layer, [unit], client=client_address(request, state.settings))
        status = render_status_page(state, connection, catalog, model, layer, unit, job)
    return respond(request, status, "_render_status.html", json, 200 if status.state == "rendered" else 202)


@twin("/models/{model}/{layer}/render", "render_layer", methods=("POST",), on=router, status_code=202,
      dependencies=[Depends(guard_renders)])
def render_layer(request: Request, model: str, layer: str, state: StateDep, connection: ConnectionDep,
                 json: bool) -> Response:
    """Queue every unit of a layer that has no picture, behind the pages people are waiting on."""
    catalog = state.catalog(connection, model)
    entry = catalog.model(model).layer(layer)
    queue = _require_queue(state)
    rendered = {unit_id for unit_id, _ in connection.execute(queries.thumbnails, {"ids": list(entry.unit_ids)})}
    missing = [index for index, unit_id in enumerate(entry.unit_ids) if unit_id not in rendered]
    queued = 0
    message = ""
    try:
        for start in range(0, len(missing), LAYER_BATCH):
            chunk = missing[start:start + LAYER_BATCH]
            queue.request_render(model, layer, chunk, priority=LAYER, client=client_address(request, state.settings))
            queued += len(chunk)
    except (QueueFull, TooManyJobs) as full:
        message = f" {full}."
    workers = len(queue.live_workers())
    message = (f"{queued} of {len(missing)} units without a picture queued." + message
               + ("" if workers else f" No worker is running: {worker_command(state)}"))
    page = LayerRequest(model, layer, queued, len(missing), message)
    return respond(request, page, "_layer_request.html", json, 202)


# Ablations over the dataset (issue 23) ------------------------------------------------------------


def _unit_ablation(state: ServerState, connection, model: str, layer: str, unit: int):  # noqa: ANN001, ANN202
    from app.ablation import ablation_view
    from app.core.contracts import unit_target
    from app.browse import ABLATABLE
    from app.core.zoo.spec import DERIVED_KINDS

    entry = state.catalog(connection, model).model(model).layer(layer)
    entry.unit_id(unit)
    if entry.kind not in ABLATABLE:
        raise NotFound(f"{layer} is a {entry.kind} layer: only a layer the next ones read can be ablated")
    return ablation_view(state.queue(), connection, model, unit_target(layer, unit, entry.kind in DERIVED_KINDS),
                         f"{layer}:{unit}", urls.unit_ablation(model, layer, unit))


#: A set of units as the query names them (``1,5,9``; at most 200, so the URL stays within what the server reads).
UNITS_PATTERN = r"^[0-9]{1,5}(,[0-9]{1,5}){0,199}$"
UnitsQuery = Annotated[str, Query(pattern=UNITS_PATTERN, max_length=1200, description="Up to 200 comma-separated unit numbers.")]
ModeQuery = Annotated[Literal["zero", "mean"], Query(description="Ablate by zero or by the dataset mean.")]


def _units_ablation(state: ServerState, connection, model: str, layer: str, units: str):  # noqa: ANN001, ANN202
    from app.ablation import ablation_view
    from app.browse import ABLATABLE

    entry = state.catalog(connection, model).model(model).layer(layer)
    if entry.kind not in ABLATABLE or entry.kind in ("nmf", "sae"):
        raise NotFound(f"{layer} is a {entry.kind} layer: only a layer the next ones read has units to ablate")
    chosen = sorted({int(unit) for unit in units.split(",")})  # the query's pattern checked the form
    for unit in chosen:
        entry.unit_id(unit)
    label = f"{layer}:{chosen[0]}" if len(chosen) == 1 else f"these {len(chosen)} units of {layer}"
    listed = ",".join(str(unit) for unit in chosen)
    return ablation_view(state.queue(), connection, model, f"units:{layer}:{listed}", label,
                         urls.units_ablation(model, layer, chosen))


@twin("/models/{model}/{layer}/ablation", "units_ablation", on=router)
def units_ablation(request: Request, model: str, layer: str, units: UnitsQuery, state: StateDep, connection: ConnectionDep,
                   json: bool) -> Response:
    """A set of a layer's units (``?units=1,5,9``: a probe layer's top units) ablated together over the dataset."""
    return respond(request, _units_ablation(state, connection, model, layer, units), "_ablation.html", json)


@twin("/models/{model}/{layer}/ablation", "units_ablation_request", methods=("POST",), on=router, status_code=202,
      dependencies=[Depends(guard_renders)],
      responses={200: {"description": "Already queued, running or measured: where it stands"}})
def units_ablation_request(request: Request, model: str, layer: str, units: UnitsQuery, state: StateDep,
                           connection: ConnectionDep, json: bool, mode: ModeQuery = "zero") -> Response:
    """Queue the set's ablation (``&mode=zero`` or ``mean``)."""
    return _queue_ablation(request, state, model, lambda: _units_ablation(state, connection, model, layer, units), mode,
                           json)


def _family_ablation(state: ServerState, connection, model: str, layer: str, family: str):  # noqa: ANN001, ANN202
    from app.ablation import ablation_view
    from app.core.contracts import FAMILY_UNITS, family_target
    from app.tuning import FAMILY_NAMES

    state.catalog(connection, model).model(model).layer(layer)
    if family not in FAMILY_NAMES:
        raise NotFound(f"no tuning family {family!r}: {', '.join(FAMILY_NAMES)}")
    return ablation_view(state.queue(), connection, model, family_target(family, layer),
                         f"the {FAMILY_UNITS} most {family}-selective units of {layer}",
                         urls.family_ablation(model, layer, family))


def _queue_ablation(request: Request, state: ServerState, model: str, make, mode: str,  # noqa: ANN001
                    json: bool) -> Response:
    """Queue the ablation ``make()`` describes unless it is queued, running or measured; answer where it stands."""
    view = make()
    run = next(run for run in view.runs if run.mode == mode)
    queued = run.state in ("none", "failed", "off")
    if queued:
        _require_queue(state).request_ablation(model, view.key, mode, client=client_address(request, state.settings))
        view = make()
    return respond(request, view, "_ablation.html", json, 202 if queued else 200)


@twin("/models/{model}/{layer}/{unit:int}/ablation", "unit_ablation", on=router)
def unit_ablation(request: Request, model: str, layer: str, unit: int, state: StateDep, connection: ConnectionDep,
                  json: bool) -> Response:
    """A unit's (or a direction's) ablation over the dataset: top-1/top-5 without it, by zero and by mean."""
    return respond(request, _unit_ablation(state, connection, model, layer, unit), "_ablation.html", json)


@twin("/models/{model}/{layer}/{unit:int}/ablation", "unit_ablation_request", methods=("POST",), on=router,
      status_code=202, dependencies=[Depends(guard_renders)],
      responses={200: {"description": "Already queued, running or measured: where it stands"}})
def unit_ablation_request(request: Request, model: str, layer: str, unit: int, state: StateDep,
                          connection: ConnectionDep, json: bool, mode: ModeQuery = "zero") -> Response:
    """Queue a unit's ablation (``?mode=zero`` or ``mean``) behind the pages people wait on."""
    return _queue_ablation(request, state, model, lambda: _unit_ablation(state, connection, model, layer, unit), mode,
                           json)


@twin("/models/{model}/{layer}/tuning/{family}/ablation", "family_ablation", on=router)
def family_ablation(request: Request, model: str, layer: str, family: str, state: StateDep,
                    connection: ConnectionDep, json: bool) -> Response:
    """A tuning family's most selective units ablated together over the dataset (Curve Circuits' ablation)."""
    return respond(request, _family_ablation(state, connection, model, layer, family), "_ablation.html", json)


@twin("/models/{model}/{layer}/tuning/{family}/ablation", "family_ablation_request", methods=("POST",), on=router,
      status_code=202, dependencies=[Depends(guard_renders)],
      responses={200: {"description": "Already queued, running or measured: where it stands"}})
def family_ablation_request(request: Request, model: str, layer: str, family: str, state: StateDep,
                            connection: ConnectionDep, json: bool, mode: ModeQuery = "zero") -> Response:
    """Queue the family's ablation (``?mode=zero`` or ``mean``)."""
    return _queue_ablation(request, state, model, lambda: _family_ablation(state, connection, model, layer, family), mode,
                           json)


# Probes --------------------------------------------------------------------------------------


class ProbeBeingDeleted(MicroscopeError):
    status_code = 409


#: Users' images are nobody else's: no shared cache keeps a probe's page, JSON or pictures.
PRIVATE = {"Cache-Control": "private, no-store"}


def _private(response: Response) -> Response:
    response.headers.update(PRIVATE)
    return response


@router.get("/models/{model}/probe", name="probe_form", include_in_schema=False)
def probe_form(request: Request, model: str, state: StateDep, connection: ConnectionDep) -> Response:
    """Upload an image to see which units of every layer it excites most."""
    check_policy(state.settings, "probes")
    _probed_model(state.catalog(connection, model).model(model))
    limits = UploadLimits.of(state.store.settings)
    page = ProbeForm(f"{model}: probe an image", model, urls.probe_form(model), urls.probes(model),
                     limits.max_bytes, limits.max_pixels)
    return respond(request, page, "probe_form.html", json=False)


def _probed_model(entry: ModelEntry) -> None:
    """Refuse (415) a probe of a model that reads no RGB images (`app.core.zoo.skips.model_skips`)."""
    if "probes" in entry.skips:
        raise Unsupported(f"{entry.name} has no probes: {entry.skips['probes']}")


def _check_length(request: Request, limit: int) -> None:
    """Refuse a body over ``limit`` bytes before reading it (the HTTP server holds a body to its Content-Length)."""
    length = request.headers.get("content-length")
    if length is None:
        raise LengthRequired("send the upload with a Content-Length")
    if not length.isdigit():
        raise BadUpload("Content-Length is not a number")
    if int(length) > limit:
        raise TooLarge(f"the upload is {int(length):,} bytes; the limit is {limit:,}")


async def _body(request: Request, limit: int) -> bytes:
    """The request's body, refused (before it is read) past ``limit`` bytes."""
    _check_length(request, limit)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the upload is over the limit of {limit:,} bytes")
    return bytes(body)


def _submit(state: ServerState, model: str, data: bytes, client: str) -> tuple[str, JobState | None]:
    """Queue an upload's probe unless it is stored or waits already: its id, and its job (None when stored).

    Runs in a worker thread (hashing and decoding a 10 MB image would stall every other request):
    an image probed before is answered from its digest, without decoding it again.
    """
    queue = _require_queue(state)
    sha256 = hashlib.sha256(data).hexdigest()
    with state.engine.connect() as connection:
        _probed_model(state.catalog(connection, model).model(model))
        row = stored_probe(connection, model, sha256=sha256)
    if row is not None:
        if queue.forgotten(row.public_id):
            raise ProbeBeingDeleted("this image's earlier probe is being deleted: upload it again in a moment")
        return row.public_id, None
    key = JobQueue.probe_key(model, sha256)
    if queue.state(key).state == "none":
        check_image(data, UploadLimits.of(state.store.settings))  # a new image: decoded once, here
    return queue.request_probe(model, sha256, data, client=client)


async def _submit_off_loop(request: Request, state: ServerState, model: str, data: bytes) -> tuple[str, JobState | None]:
    client = client_address(request, state.settings)
    return await anyio.to_thread.run_sync(_submit, state, model, data, client, limiter=state.upload_checks)


@router.post("/models/{model}/probe", name="probe_upload", include_in_schema=False,
             dependencies=[Depends(guard_probes)])
async def probe_upload(request: Request, model: str, state: StateDep) -> Response:
    """The form's upload (multipart, one file field ``image``): on to the probe's page."""
    limits = UploadLimits.of(state.store.settings)
    _check_length(request, limits.max_bytes + FORM_OVERHEAD)  # bounds what the form parser may read
    try:
        form = await request.form(max_files=1, max_fields=4)
    except MultiPartException as error:
        raise BadUpload(f"not a form upload: {error.message}") from None
    upload = form.get("image")
    if not isinstance(upload, UploadFile):
        raise BadUpload("the form has no image file (field 'image')")
    data = await upload.read()
    probe_id, _ = await _submit_off_loop(request, state, model, data)
    return RedirectResponse(urls.probe(model, probe_id), status_code=303)


@router.post("/models/{model}/probes", name="probe_api", status_code=202, dependencies=[Depends(guard_probes)], responses={
    200: {"description": "Probed already: the stored result's id and URLs"},
    409: {"description": "The same image's earlier probe is being deleted"},
    411: {"description": "No Content-Length"}, 413: {"description": "Over the byte or pixel limit"},
    415: {"description": "Not an image/* body, or not a JPEG, PNG or WebP image"}, 503: {"description": "Queue full, or no queue"},
}, openapi_extra={"requestBody": {"required": True, "content": {
    media: {"schema": {"type": "string", "format": "binary"}} for media in ("image/jpeg", "image/png", "image/webp")
}}})
async def probe_api(request: Request, model: str, state: StateDep) -> Response:
    """Probe an image: POST its bytes (JPEG, PNG or WebP); the answer names the probe and where its result is.

    The probe's id is random: keep its URL (whoever holds it sees the result, and may DELETE it).
    """
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not kind.startswith("image/"):
        raise Unsupported(f"send the image's bytes with Content-Type image/jpeg, image/png or image/webp, not "
                          f"{kind or 'none'} (the upload form posts to {urls.probe_form(model)})")
    limits = UploadLimits.of(state.store.settings)
    data = await _body(request, limits.max_bytes)
    probe_id, job = await _submit_off_loop(request, state, model, data)
    answer = {"id": probe_id, "url": urls.probe(model, probe_id), "json_url": urls.probe(model, probe_id, True),
              "state": "done" if job is None else job.state, "position": job.position if job else None}
    return _private(json_response(answer, 200 if job is None else 202))


@router.api_route("/models/{model}/probes", methods=["GET", "PUT", "PATCH", "DELETE", "OPTIONS"],
                  include_in_schema=False)
def probes_other_methods(request: Request, model: str) -> Response:
    """Only POST: there is no list of probes (they are users' images), and this is not a layer called "probes"."""
    return json_response({"error": f"{request.method} is not allowed here: POST an image to probe it",
                          "suggestions": [{"label": "probe an image", "url": urls.probe_form(model)}]}, 405,
                         {"Allow": "POST"})


@twin("/models/{model}/probes/{probe_id}", "probe", on=router)
def probe(request: Request, model: str, probe_id: str, state: StateDep, connection: ConnectionDep,
          json: bool) -> Response:
    """A probe's result: the image, its top classes, each main layer's top units with heatmaps."""
    catalog = state.catalog(connection, model)
    return _private(respond(request, probe_page(state, connection, catalog, model, probe_id), "probe.html", json))


@router.get("/models/{model}/probes/{probe_id}/status", name="probe_status", include_in_schema=False)
def probe_status(request: Request, model: str, probe_id: str, state: StateDep, connection: ConnectionDep) -> Response:
    """Polled by a waiting probe page: the page reloads itself (htmx) once the result is stored."""
    page = probe_page(state, connection, state.catalog(connection, model), model, probe_id)
    if page.state == "done":
        return Response(status_code=200, headers={"HX-Refresh": "true", **PRIVATE})
    return _private(respond(request, page, "_probe_status.html", json=False))


@twin("/models/{model}/probes/{probe_id}/groups/{layer}/{group:int}/render", "probe_group_status", on=router)
def probe_group_status(request: Request, model: str, probe_id: str, layer: str, group: int, state: StateDep,
                       connection: ConnectionDep, json: bool) -> Response:
    """Whether the picture of a probe's neuron group is rendered, queued (and where) or not asked for."""
    page = group_render_page(state, connection, state.catalog(connection, model), model, probe_id, layer, group)
    return _private(respond(request, page, "_group_render.html", json))


@twin("/models/{model}/probes/{probe_id}/groups/{layer}/{group:int}/render", "probe_group_render", methods=("POST",),
      on=router, status_code=202, dependencies=[Depends(guard_probes)],
      responses={200: {"description": "Rendered already: its status"}})
def probe_group_render(request: Request, model: str, probe_id: str, layer: str, group: int, state: StateDep,
                       connection: ConnectionDep, json: bool) -> Response:
    """Queue the picture of a probe's neuron group (its direction, rendered like a unit's); answers its status."""
    catalog = state.catalog(connection, model)
    page = group_render_page(state, connection, catalog, model, probe_id, layer, group)
    if page.state in ("none", "failed"):
        job = _require_queue(state).request_probe_render(model, probe_id, layer, "group", group,
                                                         client=client_address(request, state.settings))
        page = group_render_page(state, connection, catalog, model, probe_id, layer, group, job)
    return _private(respond(request, page, "_group_render.html", json, 200 if page.state == "rendered" else 202))


@twin("/models/{model}/probes/{probe_id}/attributions/{layer}/{index:int}", "probe_attribution_status", on=router)
def probe_attribution_status(request: Request, model: str, probe_id: str, layer: str, index: int, state: StateDep,
                             connection: ConnectionDep, json: bool, at: str | None = None) -> Response:
    """A probe's attribution maps of one of its top classes (the logit unit) or listed units, and their job's state."""
    page = attribution_status(state, connection, state.catalog(connection, model), model, probe_id, layer, index, at)
    return _private(respond(request, page, "_attribution.html", json))


@twin("/models/{model}/probes/{probe_id}/attributions/{layer}/{index:int}", "probe_attribution_request",
      methods=("POST",), on=router, status_code=202, dependencies=[Depends(guard_probes)],
      responses={200: {"description": "Made already: the maps"}})
def probe_attribution_request(request: Request, model: str, probe_id: str, layer: str, index: int, state: StateDep,
                              connection: ConnectionDep, json: bool, at: str | None = None,
                              at_field: Annotated[str | None, Form(alias="at", max_length=64)] = None) -> Response:
    """Have a worker make a target's attribution maps (every method; ``?at=LAYER``, or the form's ``at``: Grad-CAM at
    that layer)."""
    at = at or at_field or None
    catalog = state.catalog(connection, model)
    page = attribution_status(state, connection, catalog, model, probe_id, layer, index, at)
    made = {(m.method, m.at) for m in page.maps}
    missing = (not any(m == "grad_cam" and a == at for m, a in made)) if at else len({m for m, _ in made} & set(PROBE_METHODS)) < len(PROBE_METHODS)
    if missing and page.state not in ("queued", "running"):
        _require_queue(state).request_probe_render(model, probe_id, layer, f"grad_cam:{at}" if at else "attribution",
                                                   index, client=client_address(request, state.settings))
        page = attribution_status(state, connection, catalog, model, probe_id, layer, index, at)
    return _private(respond(request, page, "_attribution.html", json, 202 if missing else 200))


@twin("/models/{model}/probes/{probe_id}/caricatures/{layer}/render", "probe_caricature_status", on=router)
def probe_caricature_status(request: Request, model: str, probe_id: str, layer: str, state: StateDep,
                            connection: ConnectionDep, json: bool) -> Response:
    """Whether a probe's caricature at a layer is made, queued (and where) or not asked for."""
    page = caricature_page(state, connection, state.catalog(connection, model), model, probe_id, layer)
    return _private(respond(request, page, "_group_render.html", json))


@twin("/models/{model}/probes/{probe_id}/caricatures/{layer}/render", "probe_caricature_render", methods=("POST",),
      on=router, status_code=202, dependencies=[Depends(guard_probes)],
      responses={200: {"description": "Made already: its status"}})
def probe_caricature_render(request: Request, model: str, probe_id: str, layer: str, state: StateDep,
                            connection: ConnectionDep, json: bool) -> Response:
    """Queue a probe's caricature at a layer (Lucid's recipe, the units' renderer); answers its status."""
    catalog = state.catalog(connection, model)
    page = caricature_page(state, connection, catalog, model, probe_id, layer)
    if page.state in ("none", "failed"):
        job = _require_queue(state).request_probe_render(model, probe_id, layer, "caricature", 0,
                                                         client=client_address(request, state.settings))
        page = caricature_page(state, connection, catalog, model, probe_id, layer, job)
    return _private(respond(request, page, "_group_render.html", json, 200 if page.state == "rendered" else 202))


@twin("/models/{model}/probes/{probe_id}/contributions/{layer}", "probe_contributions_status", on=router)
def probe_contributions_status(request: Request, model: str, probe_id: str, layer: str, state: StateDep,
                               connection: ConnectionDep, json: bool) -> Response:
    """Whether the spatial attribution of a probe's units of a layer is made; the page reloads once it is."""
    page = contributions_page(state, connection, state.catalog(connection, model), model, probe_id, layer)
    if page.state == "done" and not json and request.headers.get("hx-request"):
        return Response(status_code=200, headers={"HX-Refresh": "true", **PRIVATE})
    return _private(respond(request, page, "_contributions.html", json))


@twin("/models/{model}/probes/{probe_id}/contributions/{layer}", "probe_contributions_request", methods=("POST",),
      on=router, status_code=202, dependencies=[Depends(guard_probes)],
      responses={200: {"description": "Made already"}})
def probe_contributions_request(request: Request, model: str, probe_id: str, layer: str, state: StateDep,
                                connection: ConnectionDep, json: bool) -> Response:
    """Queue Building Blocks' spatial attribution of a probe's units of a layer to the layer before."""
    catalog = state.catalog(connection, model)
    page = contributions_page(state, connection, catalog, model, probe_id, layer)
    if page.state in ("none", "failed"):
        job = _require_queue(state).request_probe_render(model, probe_id, layer, "contributions", 0,
                                                         client=client_address(request, state.settings))
        page = contributions_page(state, connection, catalog, model, probe_id, layer, job)
    return _private(respond(request, page, "_contributions.html", json, 200 if page.state == "done" else 202))


@router.get("/models/{model}/probes/{probe_id}/images/{key}", name="probe_image", include_in_schema=False)
def probe_image(model: str, probe_id: str, key: str, state: StateDep, connection: ConnectionDep) -> Response:
    """One of a probe's pictures, to whoever holds the probe's URL: never cached by others, never a redirect."""
    page_row = stored_probe(connection, model, public_id=probe_id)
    queue = state.queue()
    if page_row is None or (queue is not None and queue.forgotten(probe_id)):
        raise NotFound(f"no probe {probe_id!r} of {model}")
    mine = key == page_row.image_key or any(
        connection.scalar(query, {"probe": page_row.id, "key": key}) is not None for query in queries.probe_pictures)
    if not mine or not state.blobs.has_key(key):
        raise NotFound(f"the probe {probe_id} has no image {key!r}")
    return Response(state.blobs.get(key), media_type=state.media_type(key), headers=PRIVATE)


def _forget(state: ServerState, request: Request, model: str, probe_id: str) -> None:
    queue = _require_queue(state)
    with state.engine.connect() as connection:
        state.catalog(connection, model).model(model)
        stored = stored_probe(connection, model, public_id=probe_id) is not None
    if not stored and queue.probe_of(probe_id) is None:
        raise NotFound(f"no probe {probe_id!r} of {model}")
    queue.request_forget(model, probe_id, client=client_address(request, state.settings))


@router.delete("/models/{model}/probes/{probe_id}.json", name="probe_forget", status_code=202,
               dependencies=[Depends(guard_probes)], responses={
                   202: {"description": "Deleted for everyone from now on; a worker removes its rows and images"},
                   404: {"description": "No such probe"}})
def probe_forget(request: Request, model: str, probe_id: str, state: StateDep) -> Response:
    """Delete a probe (DELETE its JSON URL): whoever holds its URL may (the id is its owner's secret). Its image goes too."""
    _forget(state, request, model, probe_id)
    return _private(json_response({"id": probe_id, "state": "deleted"}, 202))


@router.post("/models/{model}/probes/{probe_id}/delete", name="probe_delete", include_in_schema=False,
             dependencies=[Depends(guard_probes)])
def probe_delete(request: Request, model: str, probe_id: str, state: StateDep) -> Response:
    """The probe page's Delete button: on to the probe form."""
    _forget(state, request, model, probe_id)
    return RedirectResponse(urls.probe_form(model), status_code=303)


# Login (the token, for browsers) ---------------------------------------------------------------


def _local_path(target: str) -> str:
    """``target`` where it is a path on this server, else the home page (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else urls.home()


@router.get("/login", name="login", include_in_schema=False)
def login_form(request: Request, state: StateDep, next: str = "/") -> Response:  # noqa: A002 - the form's field
    page = LoginPage("Log in", _local_path(next), state.settings.token is not None,
                     "" if state.settings.token else "This server asks for no token.")
    return respond(request, page, "login.html", json=False)


@router.post("/login", name="login_submit", include_in_schema=False)
async def login(request: Request, state: StateDep) -> Response:
    """Check the token (rate-limited like every live POST) and keep it in an HttpOnly, SameSite cookie."""
    check_origin(request)
    state.limiter.hit(client_address(request, state.settings))
    form = await request.form(max_files=0, max_fields=3)
    token, target = form.get("token"), _local_path(str(form.get("next") or "/"))
    if not isinstance(token, str) or not token_matches(state.settings, token) or state.settings.token is None:
        page = LoginPage("Log in", target, state.settings.token is not None, "That is not the token of this server.")
        return respond(request, page, "login.html", json=False, status_code=403)
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https",
                        max_age=30 * 24 * 3600)
    return response
