"""The web server: ``create_app(settings)`` builds it (run it with ``uvicorn --factory app.main:create_app``).

It opens the store read-only, never imports torch and never runs a model:
every page is built from what precompute stored. The live features (renders
on demand, probes) only write jobs to the queue that ``microscope worker`` takes.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi_offline import FastAPIOffline
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from fastapi.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from app import urls
from app.core.errors import MicroscopeError, ModelNotHeld, NotFound
from app.browse import not_held_page
from app.headers import SecurityHeaders
from app.respond import error_response, respond, wants_json
from app.core.settings import Settings
from app.state import ServerState
from app.core.store import Store
from app.live import router as live_router
from app.views import router, suggestion_links


class HeadAsGet:
    """HEAD on every GET route: the GET's status and headers without its body (RFC 9110, 9.3.2)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
            elif not message.get("more_body", False):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET"}, receive, headers_only)


#: What every JSON error says (400 and 404 alike): the message and where to go instead.
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "suggestions"],
    "properties": {
        "error": {"type": "string"},
        "suggestions": {"type": "array", "items": {"type": "object", "properties": {
            "label": {"type": "string"}, "url": {"type": "string"}}}},
    },
}


LIVE_ERRORS = {
    "411": "The upload has no Content-Length",
    "413": "The upload is over the byte or pixel limit",
    "415": "The upload is not a JPEG, PNG or WebP image",
    "503": "The job queue is full (or its upload quota), or the server has none",
    "403": "The live policy refuses it, the token is missing or wrong, or it comes from another site",
    "429": "This client is over its rate, or has its share of the queue waiting",
}
#: Errors every live POST may answer, uploads or not.
EVERY_POST = frozenset({"503", "403", "429"})


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema with the errors these routes really return: 400 (not 422) and 404, typed."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
    for components in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(components, None)
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
    for operations in schema.get("paths", {}).values():
        for method, operation in operations.items():
            responses = operation["responses"]
            responses.pop("422", None)
            responses["400"] = {"description": "Malformed parameters", "content": error}
            responses["404"] = {"description": "No such model, layer, unit or page", "content": error}
            if method in ("post", "delete"):  # the live features: the queue may be full or absent; uploads have limits
                upload = method == "post" and "probes" in operation.get("operationId", "")
                for code, description in LIVE_ERRORS.items():
                    if upload or code in EVERY_POST:
                        responses[code] = {"description": description, "content": error}
    app.openapi_schema = schema
    return schema


def _allowed(path: str) -> str:
    """The methods of every route whose path matches ``path`` (a GET and a POST of one URL are two routes)."""
    methods: set[str] = set()
    for route in [*live_router.routes, *router.routes]:
        if isinstance(route, APIRoute) and route.path_regex.match(path):
            methods |= route.methods
    return ", ".join(sorted(methods))


#: What each live policy lets visitors do (said in the API's description and on pages).
LIVE_WORDS = {"off": "no renders on demand, no probes", "renders": "renders on demand, no probes",
              "all": "renders on demand and probes of your images"}


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()
    store = Store.open(settings, readonly=True)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    policy = settings.live_policy
    # fastapi-offline serves Swagger UI's and ReDoc's files from its package (pinned), never from a CDN.
    app = FastAPIOffline(
        lifespan=lifespan,
        title="Microscope",
        description="Feature visualizations, dataset examples and circuits of every unit of vision networks. "
        "Every page has a JSON twin at the same path plus `.json`. "
        f"Live side on this server: **{policy}** ({LIVE_WORDS[policy]})"
        + ("; POSTs carry the token (header `X-Microscope-Token`)." if settings.token else "."),
        version="0.1.0",
    )
    app.state.microscope = state = ServerState(store)
    with store.engine.connect() as connection:
        state.catalog(connection)
    # The catalog is tens of thousands of long-lived objects: freezing them keeps the garbage
    # collector's full passes (tens of milliseconds each) from stalling requests.
    gc.freeze()
    templates = Jinja2Templates(directory=str(resources.files("templates")))
    templates.env.globals["urls"] = urls
    app.state.templates = templates
    app.mount("/static", StaticFiles(directory=str(resources.files("static"))), name="static")
    app.include_router(live_router)  # first: /models/m/probe is not a layer called "probe"
    app.include_router(router)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    # HTML and JSON compress several-fold; Starlette leaves already-compressed images (JPEG, PNG,
    # WebP) as they are.
    app.add_middleware(GZipMiddleware, minimum_size=1000, compresslevel=5)
    app.add_middleware(HeadAsGet)
    app.add_middleware(SecurityHeaders)

    @app.exception_handler(MicroscopeError)
    def microscope_error(request: Request, error: MicroscopeError) -> Response:
        if isinstance(error, ModelNotHeld):
            return respond(request, not_held_page(error), "not_held.html", wants_json(request), error.status_code)
        return error_response(request, str(error), suggestion_links(error) if isinstance(error, NotFound) else [],
                              error.status_code)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, error: HTTPException) -> Response:
        message = "no such page" if error.status_code == 404 else str(error.detail)
        suggestions = [{"label": "all models", "url": urls.home()}, {"label": "search", "url": urls.search()}]
        headers = error.headers
        if error.status_code == 405:
            # Allow names every method of the path (RFC 9110, 15.5.6), not only the first route's.
            headers = {**(headers or {}), "Allow": _allowed(request.url.path)}
        return error_response(request, message, suggestions, error.status_code, headers)

    @app.exception_handler(RequestValidationError)
    def invalid_request(request: Request, error: RequestValidationError) -> Response:
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in error.errors())
        return error_response(request, message, [], 400)

    return app
