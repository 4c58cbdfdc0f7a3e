"""The routes, one per URL level; each resolves its path, builds its page, and responds.

Routes with a ``.json`` twin are declared twice through `twin`, the
``.json`` path first, with path converters (``{unit:int}``) so that
``447.json`` is never taken for a unit called "447.json".
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from sqlalchemy import Connection

from app import browse, tuning, urls
from app.status import worker_doing
from app.access import allows
from app.core.errors import NotFound
from app.respond import json_response, respond
from app.search import search
from app.state import ServerState
from app.core.store.maintenance import probe_blob

router = APIRouter()


# Views are coroutines that query the local database directly: each query takes well under a
# millisecond on SQLite, less than a hop to the thread pool and back would cost.


async def get_state(request: Request) -> ServerState:
    return request.app.state.microscope


async def get_connection(request: Request) -> AsyncIterator[Connection]:
    with request.app.state.microscope.engine.connect() as connection:
        yield connection


StateDep = Annotated[ServerState, Depends(get_state)]
ConnectionDep = Annotated[Connection, Depends(get_connection)]


def twin(path: str, name: str, methods: tuple[str, ...] = ("GET",), on: APIRouter = router,
         **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register ``view(..., json: bool)`` at ``path.json`` (JSON, in the API schema) and ``path`` (HTML).

    ``on`` is the router (the live routes have their own), ``options`` go to both routes
    (status codes, declared responses).
    """

    def register(view: Callable[..., Any]) -> Callable[..., Any]:
        json_path = "/index.json" if path == "/" else f"{path}.json"
        on.add_api_route(json_path, _bind(view, True), methods=list(methods), name=f"{name}_json", **options)
        on.add_api_route(path, _bind(view, False), methods=list(methods), name=name, include_in_schema=False,
                         response_class=Response, **options)
        return view

    return register


def _bind(view: Callable[..., Any], json: bool) -> Callable[..., Any]:
    """``view`` with its ``json`` argument fixed; a plain function stays one (FastAPI runs it in its thread pool)."""
    if inspect.iscoroutinefunction(view):
        async def bound(*args: Any, **kwargs: Any) -> Any:
            return await view(*args, json=json, **kwargs)
    else:
        def bound(*args: Any, **kwargs: Any) -> Any:
            return view(*args, json=json, **kwargs)

    functools.update_wrapper(bound, view)
    signature = inspect.signature(view)
    bound.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for p in signature.parameters.values() if p.name != "json"]
    )
    return bound


@twin("/", "index")
async def index(request: Request, state: StateDep, connection: ConnectionDep, json: bool) -> Response:
    """The models in the store, with coverage."""
    page = browse.index_page(state.catalog(connection), state.coverage(connection))
    return respond(request, page, "index.html", json)


@twin("/methods", "methods")
async def methods(request: Request, json: bool) -> Response:
    """Each method the microscope uses: its reference (paper and code), parameters, deviations and tests."""
    from app.methods import methods_page

    return respond(request, methods_page(), "methods.html", json)


@twin("/models/{model}", "model")
async def model(request: Request, model: str, state: StateDep, connection: ConnectionDep, json: bool) -> Response:
    """A model's layers in network order, with coverage per technique and a strip of visualizations."""
    queue = state.queue()
    beats = queue.live_workers() if queue is not None else []
    page = browse.model_page(state.catalog(connection, model), connection, model, state.coverage(connection),
                             bool(beats), probes=allows(state.settings, "probes"),
                             workers=[worker_doing(beat.doing) for beat in beats])
    return respond(request, page, "model.html", json)


@router.get("/models/{model}/sanity.svg", name="sanity_plot", include_in_schema=False)
def sanity_plot(request: Request, model: str, state: StateDep) -> Response:
    """The randomization test's cascades on a model (SVG, drawn by matplotlib)."""
    from app.attribution import sanity_plot as draw

    with state.engine.connect() as connection:
        state.catalog(connection, model).model(model)
        svg, etag = draw(connection, model)
    return _cached(request, svg, etag, "image/svg+xml", "no-cache")  # a rerun redraws it: always revalidated


#: OpenAI Microscope's ``models.technique`` values and the section of a unit's page each lands on. Microscope's
#: DeepDream of a unit has no technique of its own here: it lands on the unit's visualizations; on a layer,
#: ``deep_dream`` lands on the layer's DeepDream (`LAYER_SECTIONS`).
MICROSCOPE_SECTIONS = {"feature_vis": "visualizations", "deep_dream": "visualizations",
                       "dataset_examples": "examples"}
LAYER_SECTIONS = {"deep_dream": "deep-dream"}


def microscope_link(request: Request, state: ServerState, connection: Connection, model: str, layer: str,
                    unit: int | None, json: bool) -> Response | None:
    """A redirect for the URL shapes of OpenAI Microscope (``/models/m/mixed4c_0/447?models.technique=...``).

    Microscope names a layer's op ``mixed4c_0``; where no layer of that name exists and ``mixed4c`` does,
    the link lands on ``mixed4c`` (and on the section its ``models.technique`` names).
    """
    technique = request.query_params.get("models.technique")
    names = state.catalog(connection, model).model(model).by_name
    name = layer[:-2] if layer not in names and layer.endswith("_0") and layer[:-2] in names else layer
    if name == layer and technique is None:
        return None
    url = urls.unit(model, name, unit, json) if unit is not None else urls.layer(model, name, json=json)
    section = (MICROSCOPE_SECTIONS if unit is not None else LAYER_SECTIONS).get(technique or "")
    if section and not json:
        url += f"#{section}"
    return RedirectResponse(url, status_code=301)


@twin("/models/{model}/{layer}", "layer")
async def layer(
    request: Request, model: str, layer: str, state: StateDep, connection: ConnectionDep, json: bool,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
    label: Annotated[str | None, Query(max_length=128, description="Only units labelled with this concept, or one under it")] = None,
) -> Response:
    """A page of a layer's units (htmx requests get only the grid, to append); ``label`` filters by concept."""
    redirect = microscope_link(request, state, connection, model, layer, None, json)
    if redirect is not None:
        return redirect
    built = browse.layer_page(state.catalog(connection, model), connection, model, layer, page,
                             renders=allows(state.settings, "renders"), label=label or None)
    return respond(request, built, "layer.html", json)


@twin("/models/{model}/{layer}/{unit:int}", "unit")
async def unit(request: Request, model: str, layer: str, unit: int, state: StateDep, connection: ConnectionDep,
         json: bool) -> Response:
    """A unit: its visualizations, dataset examples and circuit."""
    redirect = microscope_link(request, state, connection, model, layer, unit, json)
    if redirect is not None:
        return redirect
    page = browse.unit_page(state.catalog(connection, model), connection, model, layer, unit,
                           renders=allows(state.settings, "renders"))
    return respond(request, page, "unit.html", json)


@twin("/models/{model}/{layer}/tuning/{family}", "tuning_family")
async def tuning_family(request: Request, model: str, layer: str, family: str, state: StateDep,
                        connection: ConnectionDep, json: bool) -> Response:
    """A layer's units ranked by selectivity to one stimulus family, the most selective on a circle by their
    preferred orientation; the JSON lists every unit's ``unit``, ``selectivity`` and ``preferred`` parameters."""
    page = tuning.family_page(state.catalog(connection, model), connection, model, layer, family)
    return respond(request, page, "family.html", json)


#: Plots and stimuli change only with their run (a rerun is a new ETag): cached for a day, then revalidated.
TUNING_CACHE = "public, max-age=86400"


def _cached(request: Request, body: bytes, etag: str, media_type: str, cache: str = TUNING_CACHE) -> Response:
    headers = {"Cache-Control": cache, "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)


@router.get("/models/{model}/{layer}/{unit:int}/tuning/{family}.svg", name="tuning_plot", include_in_schema=False)
def tuning_plot(request: Request, model: str, layer: str, unit: int, family: str, state: StateDep,
                small: Annotated[bool, Query()] = False) -> Response:
    """A unit's tuning plot (SVG, drawn by matplotlib; a sync view: drawing takes tens of milliseconds)."""
    with state.engine.connect() as connection:
        svg, etag = tuning.plot(state.catalog(connection, model), connection, model, layer, unit, family, small)
    return _cached(request, svg, etag, "image/svg+xml")


@router.get("/models/{model}/{layer}/{unit:int}/tuning/{family}.png", name="tuning_stimulus", include_in_schema=False)
def tuning_stimulus(request: Request, model: str, layer: str, unit: int, family: str, state: StateDep) -> Response:
    """A unit's preferred stimulus of a family, drawn from the tuning run's recipe (no stimulus is stored)."""
    with state.engine.connect() as connection:
        png, etag = tuning.stimulus(state.catalog(connection, model), connection, model, layer, unit, family)
    return _cached(request, png, etag, "image/png")


@twin("/models/{model}/{layer}/{unit:int}/{direction}/{other}", "connections")
async def connections(request: Request, model: str, layer: str, unit: int, direction: str, other: str,
                      state: StateDep, connection: ConnectionDep, json: bool) -> Response:
    """One group of a unit's circuit in full: its inputs from (or outputs to) one layer, strongest first."""
    page = browse.connections_page(state.catalog(connection, model), connection, model, layer, unit, direction, other)
    return respond(request, page, "connections.html", json)


@twin("/models/{model}/{layer}/{unit:int}/examples/{kind}/{rank:int}", "example")
async def example(request: Request, model: str, layer: str, unit: int, kind: str, rank: int, state: StateDep,
            connection: ConnectionDep, json: bool) -> Response:
    """One dataset example: the whole image with the unit's receptive field marked."""
    if kind not in ("top", "bottom"):
        raise NotFound(f"examples are 'top' or 'bottom', not {kind!r}")
    page = browse.example_page(state.catalog(connection, model), connection, model, layer, unit, kind, rank)
    return respond(request, page, "example.html", json)


@router.get("/search.json", name="search_json")
async def search_json(state: StateDep, connection: ConnectionDep, q: Annotated[str, Query(max_length=200)] = "",
                      page: Annotated[int, Query(ge=1, le=100_000)] = 1) -> Any:
    """Pages matching a query: ``mixed4c:447``, ``mixed4c 447``, a class, a concept (``dog``) or a layer name;
    50 results a page, units with their pictures."""
    catalog = state.catalog(connection)
    return json_response(browse.search_page(catalog, connection, q, search(catalog, q, connection), page, True))


@router.get("/search", name="search", include_in_schema=False, response_class=Response)
async def search_page(
    request: Request, state: StateDep, connection: ConnectionDep,
    q: Annotated[str, Query(max_length=200)] = "",
    model: Annotated[str | None, Query(max_length=64)] = None,
    layer: Annotated[str | None, Query(max_length=64)] = None,
    page: Annotated[int, Query(ge=1, le=100_000)] = 1,
) -> Response:
    """Search; a layer page's jump box sends its model and layer with a bare unit number."""
    if layer and q.strip().isdigit():
        q = f"{model + ' ' if model else ''}{layer}:{q.strip()}"
    catalog = state.catalog(connection)
    hits = search(catalog, q, connection)
    if len(hits) == 1 and page == 1:
        return RedirectResponse(hits[0].url, status_code=303)
    return respond(request, browse.search_page(catalog, connection, q, hits, page, False), "search.html", json=False)


#: How long a presigned blob URL stays valid (``MICROSCOPE_BLOBS_REDIRECT=1``).
SIGNED_SECONDS = 3600


@router.get("/blobs/{key}", name="blob", include_in_schema=False)
def blob(key: str, request: Request, state: StateDep) -> Response:
    """A stored image by content key: immutable, cached for a year, its key as the ETag.

    A sync view (FastAPI runs it in its thread pool): reading object storage blocks.
    """
    if not state.blobs.has_key(key):
        raise NotFound(f"no blob {key!r}")
    with state.engine.connect() as connection:
        if probe_blob(connection, key):  # a user's image: only under its probe's (secret) URL
            raise NotFound(f"no blob {key!r}")
    etag = f'"{key.split(".")[0]}"'
    headers = {"Cache-Control": "public, max-age=31536000, immutable", "ETag": etag}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    local = state.blobs.local_path(key)
    if local is not None:
        return FileResponse(local, media_type=state.media_type(key), headers=headers)
    signed = state.blobs.signed_url(key, SIGNED_SECONDS)
    if signed is not None:  # the bucket serves the bytes; the redirect itself may be cached for a while
        return RedirectResponse(signed, status_code=307, headers={"Cache-Control": f"private, max-age={SIGNED_SECONDS // 2}"})
    # Object storage through the server: blobs are small images (at most a few hundred KB).
    return Response(state.blobs.get(key), media_type=state.media_type(key), headers=headers)


def suggestion_links(error: NotFound) -> list[dict[str, str]]:
    """Where an unknown name probably meant to go."""
    from app.core.errors import UnitNotFound, UnknownLayer, UnknownModel

    if isinstance(error, UnknownModel):
        return [{"label": name, "url": urls.model(name)} for name in error.suggestions]
    if isinstance(error, UnknownLayer):
        return [{"label": name, "url": urls.layer(error.model, name)} for name in error.suggestions]
    if isinstance(error, UnitNotFound):
        return [{"label": f"{error.model}/{error.layer}", "url": urls.layer(error.model, error.layer)}]
    return [{"label": name, "url": urls.search(name)} for name in error.suggestions]
