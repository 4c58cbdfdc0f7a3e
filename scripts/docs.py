#!/usr/bin/env python
"""Write the references generated from the code: docs/cli.md (every `microscope` command and option, from the
command itself) and docs/urls.md (every route of the server, from the app). tests/test_docs.py fails when either
is stale; run `python scripts/docs.py` after changing a command or a route, and commit what it writes."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CLI_HEAD = """# CLI reference

Generated from the command by `python scripts/docs.py` (tests/test_docs.py fails when it is stale): every
`microscope` command with its options, defaults and environment variables. The [settings](settings.md) say where
each value comes from when no flag is given; [getting started](getting-started.md) walks through the commonest.

"""
URLS_HEAD = """# URL and JSON reference

Generated from the server's routes by `python scripts/docs.py` (tests/test_docs.py fails when it is stale). Every
page's JSON twin is the same path with `.json` (or `Accept: application/json`); `/openapi.json`, `/docs` and
`/redoc` describe the JSON API's schemas. Paths are permanent: they name models, layers and units as OpenAI
Microscope's do ([models](models.md#links-from-openai-microscope)).

| path | methods | what it answers |
|---|---|---|
"""


def cli_reference() -> str:
    import typer
    from typer.cli import get_docs_for_click

    from app.core.cli import with_plugins

    command = typer.main.get_command(with_plugins())
    context = typer.Context(command)
    text = get_docs_for_click(obj=command, ctx=context, name="microscope", title="microscope")
    return CLI_HEAD + text.split("\n", 2)[2].strip() + "\n"  # its own title replaced by ours


def url_reference() -> str:
    from fastapi.routing import APIRoute
    from starlette.routing import Mount

    import tempfile

    from app.core.settings import Settings
    from app.core.store import Store
    from app.main import create_app

    with tempfile.TemporaryDirectory() as folder:  # an empty store: the routes do not depend on what it holds
        settings = Settings.load(Path(folder), environ={})
        Store.open(settings, create=True).close()
        app = create_app(settings)
    rows: dict[tuple[str, str], list] = {}  # (path without .json, methods) -> [doc, has a .json twin, has a page]
    routes = list(app.routes)
    while routes:
        route = routes.pop(0)
        if hasattr(route, "original_router"):  # a router the app includes (FastAPI keeps its own routes apart)
            routes[:0] = route.original_router.routes
            continue
        if isinstance(route, Mount):
            path, methods, doc = route.path + "/…", "GET", f"files ({route.name})"
        else:
            endpoint = getattr(route, "endpoint", None)
            paragraph = (endpoint.__doc__ or "").strip().split("\n\n")[0] if endpoint is not None else ""
            doc = " ".join(line.strip() for line in paragraph.splitlines()) or FASTAPI_OWN.get(route.path, "")
            path, methods = route.path, ", ".join(sorted(set(route.methods or ()) - {"HEAD"}))
        twin = path.endswith(".json") and path != "/openapi.json"
        row = rows.setdefault((path.removesuffix(".json") if twin else path, methods), [doc, False, False])
        row[1 if twin else 2] = True
    lines = []
    for (path, methods), (doc, json, page) in rows.items():
        shown = f"`{path}` (and `.json`)" if json and page else f"`{path}.json`" if json else f"`{path}`"
        escaped = doc.replace("|", "\\|")
        lines.append(f"| {shown} | {methods} | {escaped} |\n")
    return URLS_HEAD + "".join(lines)


#: FastAPI's own routes, which carry no docstring of ours.
FASTAPI_OWN = {"/openapi.json": "The JSON API's OpenAPI schema.", "/docs": "Swagger UI over the schema (served from a "
               "package, not a CDN).", "/docs/oauth2-redirect": "Swagger UI's OAuth helper page.",
               "/redoc": "ReDoc over the schema.", "/login": "The form that asks for the token (a server with one)."}


def generated() -> dict[Path, str]:
    return {ROOT / "docs" / "cli.md": cli_reference(), ROOT / "docs" / "urls.md": url_reference()}


if __name__ == "__main__":
    for path, text in generated().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path.relative_to(ROOT)}")
