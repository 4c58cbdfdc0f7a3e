"""Choosing a page's representation last: JSON twin, htmx fragment or full page."""

from __future__ import annotations

import dataclasses
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.templating import Jinja2Templates


def as_json(page: Any) -> Any:
    return dataclasses.asdict(page) if dataclasses.is_dataclass(page) else page


def respond(request: Request, page: Any, template: str, json: bool, status_code: int = 200) -> Response:
    """The JSON twin for ``.json`` paths; for htmx requests only the page's content; else the whole page."""
    if json:
        return JSONResponse(as_json(page), status_code=status_code)
    templates: Jinja2Templates = request.app.state.templates
    fragment = request.headers.get("HX-Request") == "true"
    response = templates.TemplateResponse(
        request, template, {"page": page, "fragment": fragment}, status_code=status_code
    )
    response.headers["Vary"] = "HX-Request"
    return response


def html_error(request: Request, message: str, suggestions: list[dict[str, str]], status_code: int) -> HTMLResponse:
    templates: Jinja2Templates = request.app.state.templates
    return templates.TemplateResponse(
        request, "error.html",
        {"page": {"title": "Not found" if status_code == 404 else "Bad request", "message": message,
                  "suggestions": suggestions, "kind": "error"}, "fragment": False},
        status_code=status_code,
    )
