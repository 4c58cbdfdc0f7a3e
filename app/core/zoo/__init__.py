"""The model zoo: every model Microscope knows (`app.core.zoo.registry`), and the specs written by hand."""

from __future__ import annotations

import difflib
from functools import cache

from app.core.errors import UnknownModel
from app.core.zoo.inceptionv1 import inceptionv1_caffe
from app.core.zoo.registry import DEFAULT_MODEL, REGISTRY, Entry, entry, model_names
from app.core.zoo.spec import ClassLabel, LayerSpec, ModelSpec

__all__ = ["ClassLabel", "LayerSpec", "ModelSpec", "DEFAULT_MODEL", "Entry", "REGISTRY", "entry", "get_model",
           "model_names"]

#: Specs declared by hand (the rest are derived from their traced networks).
_DECLARED = {"inceptionv1_caffe": inceptionv1_caffe}


@cache
def get_model(name: str) -> ModelSpec:
    """The hand-declared spec of model ``name``; `UnknownModel` suggests the nearest names."""
    try:
        return _DECLARED[name]()
    except KeyError:
        raise UnknownModel(name, tuple(difflib.get_close_matches(name, _DECLARED, n=3))) from None
