"""Every URL the server links to, built in one place (templates and tests use these too).

Permalinks keep the shape people cite from OpenAI Microscope:
``/models/inceptionv1/mixed4c/447``; each page's JSON twin adds ``.json``.
"""

from __future__ import annotations

from urllib.parse import quote, urlencode


def _suffix(json: bool) -> str:
    return ".json" if json else ""


def home(json: bool = False) -> str:
    return "/index.json" if json else "/"


def model(name: str, json: bool = False) -> str:
    return f"/models/{quote(name)}{_suffix(json)}"


def layer(model_name: str, layer_name: str, page: int = 1, json: bool = False) -> str:
    url = f"/models/{quote(model_name)}/{quote(layer_name)}{_suffix(json)}"
    return url if page == 1 else f"{url}?{urlencode({'page': page})}"


def unit(model_name: str, layer_name: str, index: int, json: bool = False) -> str:
    return f"/models/{quote(model_name)}/{quote(layer_name)}/{index}{_suffix(json)}"


def example(model_name: str, layer_name: str, index: int, kind: str, rank: int, json: bool = False) -> str:
    return f"/models/{quote(model_name)}/{quote(layer_name)}/{index}/examples/{kind}/{rank}{_suffix(json)}"


def connections(model_name: str, layer_name: str, index: int, direction: str, other: str, json: bool = False) -> str:
    """All of a unit's ``direction`` ("inputs" or "outputs") connections with layer ``other``."""
    return f"/models/{quote(model_name)}/{quote(layer_name)}/{index}/{direction}/{quote(other)}{_suffix(json)}"


def blob(key: str) -> str:
    return f"/blobs/{key}"


def search(query: str = "", json: bool = False) -> str:
    base = "/search.json" if json else "/search"
    return f"{base}?{urlencode({'q': query})}" if query else base


def static(path: str) -> str:
    return f"/static/{path}"
