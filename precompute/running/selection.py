"""Parsing the user's choice of layers and units (``--layers``, ``--units``)."""

from __future__ import annotations

from app.core.errors import MicroscopeError
from app.core.zoo import LayerSpec, ModelSpec


def parse_layers(spec: ModelSpec, text: str) -> list[LayerSpec]:
    """``all``, ``main`` (conv and block outputs), or comma-separated names, in network order."""
    text = text.strip()
    if text == "all":
        return list(spec.layers)
    if text == "main":
        return list(spec.main_layers)
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise MicroscopeError("--layers is empty: give 'all', 'main' or layer names separated by commas")
    chosen = {spec.layer(name).name for name in names}
    return [layer for layer in spec.layers if layer.name in chosen]


def parse_units(text: str, channels: int) -> range:
    """``all``, ``N`` or ``START:STOP`` (STOP exclusive, clipped to the layer's channels)."""
    text = text.strip()
    if text == "all":
        return range(channels)
    try:
        if ":" in text:
            start_text, stop_text = text.split(":", 1)
            start = int(start_text) if start_text else 0
            stop = int(stop_text) if stop_text else channels
        else:
            start = int(text)
            stop = start + 1
    except ValueError:
        raise MicroscopeError(f"--units {text!r} is not 'all', N or START:STOP") from None
    if start < 0 or start >= stop or start >= channels:
        raise MicroscopeError(f"--units {text!r} selects no unit of a layer with {channels} channels (0..{channels - 1})")
    return range(start, min(stop, channels))


def parse_shard(text: str | None) -> tuple[int, int]:
    """``i/n`` (0 <= i < n) or None for the whole job (``0/1``)."""
    if not text:
        return 0, 1
    try:
        index_text, count_text = text.split("/")
        index, count = int(index_text), int(count_text)
    except ValueError:
        raise MicroscopeError(f"--shard {text!r} is not i/n") from None
    if count < 1 or not 0 <= index < count:
        raise MicroscopeError(f"--shard {text!r}: need 0 <= i < n")
    return index, count



def units_per_layer(layers: list[LayerSpec], text: str, explicit: bool) -> dict[str, range]:
    """The units of each layer chosen by ``--units``.

    With layers named one by one, a range that misses a layer is an error;
    with ``--layers all`` or ``main`` the range is clipped to each layer.
    """
    parse_units(text, 1 << 30)  # malformed text is an error either way
    chosen = {}
    for layer in layers:
        try:
            chosen[layer.name] = parse_units(text, layer.channels)
        except MicroscopeError as error:
            if explicit:
                raise MicroscopeError(f"{layer.name}: {error}") from None
            chosen[layer.name] = range(0)
    return chosen
