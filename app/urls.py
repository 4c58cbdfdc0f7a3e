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


def methods(json: bool = False, key: str | None = None) -> str:
    """The methods page (each method's reference, parameters, deviations and tests), or one method's entry."""
    return f"/methods{_suffix(json)}" + (f"#{key}" if key and not json else "")


def model(name: str, json: bool = False) -> str:
    return f"/models/{quote(name)}{_suffix(json)}"


def sanity_plot(model_name: str) -> str:
    """The randomization test's cascades on a model (SVG)."""
    return f"/models/{quote(model_name)}/sanity.svg"


def layer(model_name: str, layer_name: str, page: int = 1, json: bool = False, label: str | None = None) -> str:
    """A page of a layer's units; with ``label``, only those labelled with that concept (or one under it)."""
    url = f"/models/{quote(model_name)}/{quote(layer_name)}{_suffix(json)}"
    query = {**({"label": label} if label else {}), **({"page": page} if page != 1 else {})}
    return f"{url}?{urlencode(query)}" if query else url


def unit(model_name: str, layer_name: str, index: int, json: bool = False) -> str:
    return f"/models/{quote(model_name)}/{quote(layer_name)}/{index}{_suffix(json)}"


def example(model_name: str, layer_name: str, index: int, kind: str, rank: int, json: bool = False) -> str:
    return f"/models/{quote(model_name)}/{quote(layer_name)}/{index}/examples/{kind}/{rank}{_suffix(json)}"


def connections(model_name: str, layer_name: str, index: int, direction: str, other: str, json: bool = False) -> str:
    """All of a unit's ``direction`` ("inputs" or "outputs") connections with layer ``other``."""
    return f"/models/{quote(model_name)}/{quote(layer_name)}/{index}/{direction}/{quote(other)}{_suffix(json)}"


def blob(key: str) -> str:
    return f"/blobs/{key}"


def search(query: str = "", json: bool = False, page: int = 1) -> str:
    base = "/search.json" if json else "/search"
    if not query:
        return base
    return f"{base}?{urlencode({'q': query, **({'page': page} if page > 1 else {})})}"


def static(path: str) -> str:
    return f"/static/{path}"


def render(model_name: str, layer_name: str, index: int, json: bool = False) -> str:
    """A unit's render on demand: GET its status, POST to queue it."""
    return f"/models/{quote(model_name)}/{quote(layer_name)}/{index}/render{_suffix(json)}"


def render_layer(model_name: str, layer_name: str, json: bool = False) -> str:
    """POST: queue every unit of a layer that has no picture."""
    return f"/models/{quote(model_name)}/{quote(layer_name)}/render{_suffix(json)}"


def probe_form(model_name: str) -> str:
    return f"/models/{quote(model_name)}/probe"


def probes(model_name: str) -> str:
    """POST an image's bytes here (the JSON API) to probe it."""
    return f"/models/{quote(model_name)}/probes"


def probe(model_name: str, probe_id: str, json: bool = False) -> str:
    """A probe's result (GET; DELETE the JSON one to delete it): ``probe_id`` is random, not the image's digest."""
    return f"/models/{quote(model_name)}/probes/{probe_id}{_suffix(json)}"


def probe_status(model_name: str, probe_id: str) -> str:
    return f"/models/{quote(model_name)}/probes/{probe_id}/status"


def probe_delete(model_name: str, probe_id: str) -> str:
    """POST (the page's button) to delete a probe; the API's DELETE goes to `probe`'s JSON URL."""
    return f"/models/{quote(model_name)}/probes/{probe_id}/delete"


def probe_group_render(model_name: str, probe_id: str, layer_name: str, group: int, json: bool = False) -> str:
    """A probe's neuron group's picture: its status (GET), or a request for it (POST)."""
    return f"/models/{quote(model_name)}/probes/{probe_id}/groups/{quote(layer_name)}/{group}/render{_suffix(json)}"


def probe_caricature(model_name: str, probe_id: str, layer_name: str, json: bool = False) -> str:
    """A probe's caricature at one layer: its status (GET), or a request for it (POST)."""
    return f"/models/{quote(model_name)}/probes/{probe_id}/caricatures/{quote(layer_name)}/render{_suffix(json)}"


def probe_contributions(model_name: str, probe_id: str, layer_name: str, json: bool = False) -> str:
    """Which units of the layer before add most to a probe's units of ``layer_name``: GET the state, POST to ask."""
    return f"/models/{quote(model_name)}/probes/{probe_id}/contributions/{quote(layer_name)}{_suffix(json)}"


def probe_attribution(model_name: str, probe_id: str, layer_name: str, index: int, json: bool = False) -> str:
    """A probe's attribution maps of one target (a class's logit unit, or a unit it lists): GET their state, POST
    to have them made (``?at=LAYER``: Grad-CAM at that layer)."""
    return f"/models/{quote(model_name)}/probes/{probe_id}/attributions/{quote(layer_name)}/{index}{_suffix(json)}"


def probe_image(model_name: str, probe_id: str, key: str) -> str:
    """One of a probe's images (what the network saw, or a heatmap), served private: never from /blobs."""
    return f"/models/{quote(model_name)}/probes/{probe_id}/images/{key}"


def login(next_path: str | None = None) -> str:
    return f"/login?{urlencode({'next': next_path})}" if next_path else "/login"


def tuning_family(model_name: str, layer_name: str, family: str, json: bool = False) -> str:
    """A layer's units ranked by selectivity to one stimulus family (``curves``, ``lines``, ... ``joint``)."""
    return f"/models/{quote(model_name)}/{quote(layer_name)}/tuning/{quote(family)}{_suffix(json)}"


def unit_ablation(model_name: str, layer_name: str, index: int, json: bool = False) -> str:
    """A unit's (or direction's) ablation over the dataset: GET its figures, POST ``?mode=zero|mean`` to queue it."""
    return f"/models/{quote(model_name)}/{quote(layer_name)}/{index}/ablation{_suffix(json)}"


def units_ablation(model_name: str, layer_name: str, units: list[int], json: bool = False) -> str:
    """A set of a layer's units ablated together (a probe layer's top units): GET its figures, POST
    ``&mode=zero|mean`` to queue it."""
    listed = ",".join(str(unit) for unit in sorted(units))
    return f"/models/{quote(model_name)}/{quote(layer_name)}/ablation{_suffix(json)}?units={listed}"


def family_ablation(model_name: str, layer_name: str, family: str, json: bool = False) -> str:
    """A tuning family's most selective units ablated together: GET its figures, POST ``?mode=zero|mean``."""
    return f"/models/{quote(model_name)}/{quote(layer_name)}/tuning/{quote(family)}/ablation{_suffix(json)}"


def tuning_plot(model_name: str, layer_name: str, index: int, family: str, small: bool = False) -> str:
    """A unit's tuning plot of one family (SVG)."""
    url = f"/models/{quote(model_name)}/{quote(layer_name)}/{index}/tuning/{quote(family)}.svg"
    return f"{url}?small=1" if small else url


def tuning_stimulus(model_name: str, layer_name: str, index: int, family: str) -> str:
    """A unit's preferred stimulus of one family (PNG, drawn from the tuning run's recipe)."""
    return f"/models/{quote(model_name)}/{quote(layer_name)}/{index}/tuning/{quote(family)}.png"
