"""Typed errors shared by the server, the store and the precompute job.

Each carries what a user needs to correct their input; the web handler and
the CLI render them (one line on the command line, a 404 page or JSON on the
web).
"""

from __future__ import annotations


class MicroscopeError(Exception):
    """Base of every error a user can cause; ``str()`` is a one-line message."""

    status_code = 400


class NotFound(MicroscopeError):
    status_code = 404

    def __init__(self, message: str, suggestions: tuple[str, ...] = ()) -> None:
        if suggestions:
            message = f"{message}; did you mean {', '.join(suggestions)}?"
        super().__init__(message)
        self.suggestions = suggestions


class UnknownModel(NotFound):
    def __init__(self, model: str, suggestions: tuple[str, ...] = ()) -> None:
        super().__init__(f"unknown model {model!r}", suggestions)
        self.model = model


class ModelNotHeld(UnknownModel):
    """A model Microscope knows (it is in the registry) that this store holds no catalog of.

    ``held`` names the store's models; the page says what the model is and how to precompute it.
    """

    def __init__(self, model: str, held: tuple[str, ...]) -> None:
        NotFound.__init__(self, f"this store does not hold {model!r}")
        self.model, self.held, self.suggestions = model, held, held


class UnknownLayer(NotFound):
    def __init__(self, model: str, layer: str, suggestions: tuple[str, ...] = ()) -> None:
        super().__init__(f"model {model!r} has no layer {layer!r}", suggestions)
        self.model, self.layer = model, layer


class UnitNotFound(NotFound):
    def __init__(self, model: str, layer: str, unit: int, channels: int) -> None:
        super().__init__(f"layer {model}/{layer} has units 0..{channels - 1}, not {unit}")
        self.model, self.layer, self.unit = model, layer, unit


class StoreError(MicroscopeError):
    """The store cannot be used as asked (newer schema, missing catalog, ...)."""


class StoreMissing(StoreError):
    """There is no store where one was expected."""


class WeightsError(MicroscopeError):
    """A weights file is missing, of the wrong size or fails its checksum."""


class DatasetError(MicroscopeError):
    """An image folder cannot be used (missing, empty, unknown labels)."""
