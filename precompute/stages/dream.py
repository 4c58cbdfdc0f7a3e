"""DeepDream per layer (OpenAI Microscope's ``deep_dream`` technique): one render of each layer's whole output.

The objective is Lucid's ``deepdream``: the mean over channels and positions
of the layer's squared ReLU output, with the redirected gradient; everything
else (Fourier basis, decorrelated colour, Adam, Lucid's transforms) is the
channel renders' recipe, stored with the image. One run per call; a layer
whose image has the same recipe is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from sqlalchemy import select

from app.core.store import Layer, LayerArtifact
from app.core.zoo import LayerSpec, ModelSpec
from precompute.optvis import objectives
from precompute.optvis.param import PARAMETERIZATIONS
from precompute.optvis.render import render
from precompute.running.runs import catalogued_model, digested, finish_run, progress_bar, replace_rows, start_run
from precompute.running.context import Stage
from precompute.stages.vis import VisConfig, encode_render, fitted, pixels_of, recipe, unit_seed

DEEP_DREAM = "deep_dream"


@dataclass
class DreamResult:
    rendered: int = 0
    skipped: int = 0


def dream_recipe(config: VisConfig, spec: ModelSpec, layer: LayerSpec, weights_sha256: str, device: torch.device) -> dict:
    """The channel renders' recipe with the layer objective; its digest decides whether a stored image is reused."""
    params = {key: value for key, value in recipe(config, spec, layer, DEEP_DREAM, weights_sha256, device).items()
              if key != "recipe_sha256"}
    params.update(objective="mean over channels and positions of the squared ReLU output (Lucid's deepdream)")
    return digested(params)


def run_deep_dream(stage: Stage, layers: Sequence[LayerSpec], config: VisConfig) -> DreamResult:
    """Render each of ``layers``' DeepDream image (logits have none) unless it is stored with the same recipe."""
    store, spec, net, weights_sha256, device = stage.store, stage.spec, stage.net, stage.weights_sha256, stage.device
    with store.session() as session:
        model_id = catalogued_model(session, spec).id
        layer_ids = dict(session.execute(select(Layer.name, Layer.id).where(Layer.model_id == model_id)).all())
        stored = set(session.execute(select(LayerArtifact.layer_id, LayerArtifact.recipe_sha256)
                                     .where(LayerArtifact.technique == DEEP_DREAM)).all())
    result = DreamResult()
    todo = []
    for layer in (layer for layer in layers if layer.kind != "logits"):
        params = dream_recipe(config, spec, layer, weights_sha256, device)
        if (layer_ids[layer.name], params["recipe_sha256"]) in stored:
            result.skipped += 1
        else:
            todo.append((layer, params))
    if not todo:
        return result
    for attempt in store.retrying():
        with attempt, store.transaction() as session:
            run = start_run(session, "vis", model_id, {"technique": DEEP_DREAM, "layers": [layer.name for layer, _ in todo]},
                            weights_sha256=weights_sha256, seed=config.seed)
    bar = progress_bar(total=len(todo), unit="layer", desc="deep dream", enabled=stage.progress)
    for layer, params in todo:
        seed = unit_seed(config.seed, layer.name, 0, DEEP_DREAM)
        sized = fitted(spec, config)
        rendered = render(net, objectives.deepdream(layer.name),
                          PARAMETERIZATIONS["fourier"](sized.size, channels=spec.channels), [seed],
                          sized.transforms, steps=config.steps, device=device, learning_rate=config.learning_rate,
                          precision=config.precision)
        key = store.blobs.put(encode_render(pixels_of(rendered.images)[:1]), "webp")
        store.blobs.flush()  # durable before the row points at it
        row = {"layer_id": layer_ids[layer.name], "technique": DEEP_DREAM, "blob_key": key,
               "recipe_sha256": params["recipe_sha256"], "recipe": {**params, "seed": seed},
               "objective": round(float(rendered.objective[0]), 4)}
        for attempt in store.retrying():
            with attempt, store.transaction() as session:
                replace_rows(session, LayerArtifact, LayerArtifact.layer_id, [row["layer_id"]], [row], run,
                             LayerArtifact.technique == DEEP_DREAM)
        result.rendered += 1
        bar.update(1)
    bar.close()
    for attempt in store.retrying():
        with attempt, store.transaction() as session:
            finish_run(session, run)
    return result
