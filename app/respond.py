"""Choosing a page's representation last: JSON twin, htmx fragment or full page."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from fastapi import Request
from fastapi.responses import HTMLResponse, Response
from fastapi.templating import Jinja2Templates


def json_response(data: Any, status_code: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    """orjson serializes the page dataclasses directly, several times faster than asdict + json."""
    return Response(orjson.dumps(data), status_code=status_code, media_type="application/json", headers=headers)


def respond(request: Request, page: Any, template: str, json: bool, status_code: int = 200) -> Response:
    """The JSON twin for ``.json`` paths; for htmx requests only the page's content; else the whole page."""
    if json:
        return json_response(page, status_code)
    templates: Jinja2Templates = request.app.state.templates
    fragment = request.headers.get("HX-Request") == "true"
    response = templates.TemplateResponse(
        request, template, {"page": page, "fragment": fragment}, status_code=status_code
    )
    response.headers["Vary"] = "HX-Request"
    return response


def wants_json(request: Request) -> bool:
    """JSON twins and the probe API (its POST and DELETE) answer errors in JSON; pages, in HTML."""
    return request.url.path.endswith((".json", "/probes")) or request.method == "DELETE"


def error_response(request: Request, message: str, suggestions: list[dict[str, str]], status_code: int,
                   headers: Mapping[str, str] | None = None) -> Response:
    """Every error the server answers (its three handlers' alike): ``{"error", "suggestions"}`` as JSON where
    JSON was asked for, else the error page."""
    if wants_json(request):
        return json_response({"error": message, "suggestions": suggestions}, status_code, headers)
    return html_error(request, message, suggestions, status_code, headers)


def html_error(request: Request, message: str, suggestions: list[dict[str, str]], status_code: int,
               headers: Mapping[str, str] | None = None) -> HTMLResponse:
    templates: Jinja2Templates = request.app.state.templates
    title = {404: "Not found", 405: "Method not allowed"}.get(status_code, "Bad request")
    return templates.TemplateResponse(
        request, "error.html",
        {"page": {"title": title, "message": message, "suggestions": suggestions, "kind": "error"}, "fragment": False},
        status_code=status_code, headers=headers,
    )
