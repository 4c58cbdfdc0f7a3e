"""The store: a database of models, layers, units and what precompute made of them, plus a blob folder."""

from app.store.blobs import BlobStore, is_valid_key
from app.store.database import Store
from app.store.schema import (
    SCHEMA_VERSION,
    Artifact,
    Dataset,
    DatasetExample,
    DatasetImage,
    Edge,
    Layer,
    LayerArtifact,
    Model,
    Probe,
    ProbeUnit,
    Run,
    Unit,
    UnitLabel,
    UnitTuning,
    UnitStats,
)

__all__ = [
    "SCHEMA_VERSION",
    "Artifact",
    "BlobStore",
    "Dataset",
    "DatasetExample",
    "DatasetImage",
    "Edge",
    "Layer",
    "LayerArtifact",
    "Model",
    "Probe",
    "ProbeUnit",
    "Run",
    "Store",
    "Unit",
    "UnitLabel",
    "UnitTuning",
    "UnitStats",
    "is_valid_key",
]
