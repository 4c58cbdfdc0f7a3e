"""A small real store made by the project's own precompute stages, for the web tests."""

from __future__ import annotations

from pathlib import Path

import torch

from app.core.settings import Settings
from app.core.store import Store
from app.core.zoo import ModelSpec
from precompute.stages.catalog import catalog
from precompute.stages.circuits import run_circuits
from precompute.stages.examples import ExamplesConfig, run_examples
from precompute.stages.labels import run_labels
from precompute.running.selection import parse_layers, units_per_layer
from precompute.running.context import Stage
from precompute.stages.tuning import TuningConfig, run_tuning
from precompute.stages.vis import VisConfig, run_vis
from tests.conftest import link_sample

EXAMPLE_LAYERS = "conv2d1,mixed3a,mixed3b,mixed3b_3x3,softmax2"
CIRCUIT_LAYERS = "mixed3a,mixed3b,mixed3b_3x3_bottleneck,mixed3b_3x3,mixed4a,softmax2"


def build(root: Path, spec: ModelSpec, net: torch.nn.Module, images: Path, circuits: str = CIRCUIT_LAYERS) -> Settings:
    """Catalog, examples over 24 images, circuits of a few layers, tiny renders of a few units."""
    settings = Settings.load(root)
    cpu = torch.device("cpu")
    sample = link_sample(images, root / "images", step=40, count=24)
    with Store.open(settings, create=True) as store:
        catalog(store, spec)
        layers = tuple(parse_layers(spec, EXAMPLE_LAYERS))
        run_examples(Stage(store, net, "w", cpu, progress=False), sample, ExamplesConfig(layers=layers, k=4, batch_size=8))
        run_labels(store, spec, sample, layers)
        run_circuits(Stage(store, net, "w", torch.device("cpu"), progress=False), parse_layers(spec, circuits))
        shown = parse_layers(spec, "mixed3a,mixed3b")
        channel = VisConfig(layers=tuple(shown), units=units_per_layer(shown, "0:4", explicit=True),
                            techniques=("channel",), steps=2, size=32, batch=8, precision="fp32")
        run_vis(Stage(store, net, "w", cpu, progress=False), channel)
        every = VisConfig(layers=(spec.layer("mixed3b"),), units={"mixed3b": range(0, 1)},
                          techniques=("neuron", "negative", "diversity"), steps=2, size=32, batch=4, precision="fp32")
        run_vis(Stage(store, net, "w", cpu, progress=False), every)
        stage = Stage(store, net, "w", cpu, progress=False)
        run_tuning(stage, TuningConfig(layers=(spec.layer("conv2d1"),), images=str(sample)))  # every family
        run_tuning(stage, TuningConfig(layers=(spec.layer("mixed3b"),), families=("curves", "lines")))
    return settings
