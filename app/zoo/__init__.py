"""The model zoo: every model Microscope knows, declared as frozen data."""

from __future__ import annotations

import difflib
from functools import cache

from app.errors import UnknownModel
from app.zoo.inceptionv1 import inceptionv1
from app.zoo.spec import ClassLabel, LayerSpec, ModelSpec

__all__ = ["ClassLabel", "LayerSpec", "ModelSpec", "DEFAULT_MODEL", "get_model", "model_names"]

DEFAULT_MODEL = "inceptionv1"

_FACTORIES = {"inceptionv1": inceptionv1}


def model_names() -> tuple[str, ...]:
    return tuple(_FACTORIES)


@cache
def get_model(name: str) -> ModelSpec:
    """The spec of model ``name``; `UnknownModel` suggests the nearest names."""
    try:
        return _FACTORIES[name]()
    except KeyError:
        raise UnknownModel(name, tuple(difflib.get_close_matches(name, _FACTORIES, n=3))) from None
