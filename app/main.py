"""The web server: ``create_app(settings)`` builds it (run it with ``uvicorn --factory app.main:create_app``).

It opens the store read-only, never imports torch and never runs a model:
every page is built from what precompute stored.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from app import urls
from app.errors import MicroscopeError, NotFound
from app.respond import html_error, json_response
from app.settings import Settings
from app.state import ServerState
from app.store import Store
from app.views import router, suggestion_links


def _wants_json(request: Request) -> bool:
    return request.url.path.endswith(".json")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()
    store = Store.open(settings, readonly=True)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        store.close()

    app = FastAPI(
        lifespan=lifespan,
        title="Microscope",
        description="Feature visualizations, dataset examples and circuits of every unit of vision networks. "
        "Every page has a JSON twin at the same path plus `.json`.",
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
    app.include_router(router)

    @app.exception_handler(MicroscopeError)
    def microscope_error(request: Request, error: MicroscopeError) -> Response:
        suggestions = suggestion_links(error) if isinstance(error, NotFound) else []
        if _wants_json(request):
            return json_response({"error": str(error), "suggestions": suggestions}, error.status_code)
        return html_error(request, str(error), suggestions, error.status_code)

    @app.exception_handler(HTTPException)
    def http_error(request: Request, error: HTTPException) -> Response:
        message = "no such page" if error.status_code == 404 else str(error.detail)
        suggestions = [{"label": "all models", "url": urls.home()}, {"label": "search", "url": urls.search()}]
        if _wants_json(request):
            return json_response({"error": message, "suggestions": suggestions}, error.status_code)
        return html_error(request, message, suggestions, error.status_code)

    @app.exception_handler(RequestValidationError)
    def invalid_request(request: Request, error: RequestValidationError) -> Response:
        message = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}" for e in error.errors())
        if _wants_json(request):
            return json_response({"error": message, "suggestions": []}, 400)
        return html_error(request, message, [], 400)

    return app
