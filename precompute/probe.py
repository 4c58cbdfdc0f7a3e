"""Probes: a user's image through the network once, its top classes and each main layer's top units.

The image is framed as the examples stage frames dataset images (the centred
square of its short side, resized to the input), so a probe's activations
compare with the unit's dataset examples. For each main layer the units with
the largest maximum (pre-ReLU) activation over the image are kept, each with
a heatmap: its activation map laid over the framed image at the positions'
true centres (offset and stride), transparent at zero and below.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from app.store import Probe, ProbeUnit, Store
from app.store.schema import new_probe_id
from app.uploads import UploadLimits, check_image
from app.zoo import LayerSpec, ModelSpec
from precompute.examples import PREPROCESSING, input_transform
from precompute.runs import catalogued_model, unit_ids
from precompute.stage import Stage

TOP_CLASSES = 5
TOP_UNITS = 8
#: Heatmaps are this colour, opaque in proportion to the activation (up to ``HEATMAP_ALPHA``).
HEATMAP_COLOUR = (255, 96, 0)
HEATMAP_ALPHA = 0.85
#: Heatmaps are stored at half the input's side (the browser scales them smoothly over the image).
HEATMAP_SIDE = 112
#: Bumped when a probe's numbers would change.
PROBE_ALGORITHM = 1


def stored(store: Store, spec: ModelSpec, sha256: str) -> bool:
    with store.session() as session:
        model = catalogued_model(session, spec)
        return session.scalar(select(Probe.id).where(Probe.model_id == model.id, Probe.sha256 == sha256)) is not None


def heatmaps(maps: torch.Tensor, layer: LayerSpec, input_size: int, side: int = HEATMAP_SIDE) -> list[bytes]:
    """Each of a layer's (K, H, W) maps over the input as a ``side`` px RGBA PNG, positions at their centres.

    Opacity is the activation over the map's own maximum on this image (none at zero or below).
    """
    count, height, width = maps.shape
    # Heatmap pixel p covers input pixel (p + 0.5) * input / side - 0.5, at grid coordinate (that - offset) / stride;
    # past the outer centres the edge value holds.
    inputs = (torch.arange(side, dtype=torch.float32) + 0.5) * (input_size / side) - 0.5
    grid = (inputs - layer.offset) / layer.stride

    def normalized(coordinates: torch.Tensor, size: int) -> torch.Tensor:
        return coordinates * 2 / (size - 1) - 1 if size > 1 else torch.zeros_like(coordinates)

    ys, xs = torch.meshgrid(normalized(grid, height), normalized(grid, width), indexing="ij")
    points = torch.stack([xs, ys], dim=-1)[None].expand(count, -1, -1, -1)
    sampled = F.grid_sample(maps[:, None].float(), points, mode="bilinear", padding_mode="border",
                            align_corners=True)[:, 0]
    peaks = maps.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
    alpha = (sampled.clamp(min=0) / peaks).clamp(max=1) * (HEATMAP_ALPHA * 255)
    encoded = []
    for plane in alpha.round().to(torch.uint8).numpy():
        rgba = np.empty((side, side, 4), dtype=np.uint8)
        rgba[..., :3] = HEATMAP_COLOUR
        rgba[..., 3] = plane
        out = io.BytesIO()
        Image.fromarray(rgba, "RGBA").save(out, "PNG", compress_level=1)
        encoded.append(out.getvalue())
    return encoded


def run_probe(stage: Stage, sha256: str, data: bytes, limits: UploadLimits | None = None,
              public_id: str | None = None) -> bool:
    """Compute and store the probe of ``data`` under ``public_id`` (drawn here when None, as for a job queued
    before probes had ids); False when it was stored already (or by another worker)."""
    store, spec, net, weights_sha256, device = stage.store, stage.spec, stage.net, stage.weights_sha256, stage.device
    if stored(store, spec, sha256):
        return False
    check_image(data, limits or UploadLimits.of(store.settings))  # the server checked it; a worker trusts no queue
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = opened.convert("RGB")
    tensor = input_transform(spec)(image)[None]
    main = [layer for layer in spec.main_layers if layer.kind != "linear"]  # layers with a map to show
    logits_layer = next(layer for layer in spec.layers if layer.kind == "logits")
    with torch.no_grad():
        activations = net(tensor.to(device), [layer.name for layer in main] + [logits_layer.name])
    classes = _top_classes(spec, logits_layer, activations[logits_layer.name][0].float().cpu())
    framed = Image.fromarray((tensor[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    buffer = io.BytesIO()
    framed.save(buffer, "WEBP", quality=90)
    image_key = store.blobs.put(buffer.getvalue(), "webp")
    units = [row for layer in main for row in _top_units(store, layer, activations[layer.name][0].float().cpu(), spec.input_size)]
    store.blobs.flush()  # blobs are durable before any row points at them
    recipe = {
        "algorithm": PROBE_ALGORITHM, "weights_sha256": weights_sha256, "input": PREPROCESSING.format(size=spec.input_size),
        "activation": "maximum of the pre-ReLU activation over positions", "top_units": TOP_UNITS,
        "top_classes": TOP_CLASSES, "heatmap": "activation / the unit's maximum on this image, at position centres",
        "heatmap_side": HEATMAP_SIDE,
    }
    probe = {"sha256": sha256, "public_id": public_id or new_probe_id(), "image_key": image_key, "width": image.width,
             "height": image.height, "classes": classes, "recipe": recipe, "created_at": datetime.now(UTC).replace(tzinfo=None)}
    return _write(store, spec, probe, units, [layer.name for layer in main])


def _top_classes(spec: ModelSpec, logits_layer: LayerSpec, logits: torch.Tensor) -> list[dict]:
    top = logits.softmax(dim=0).topk(TOP_CLASSES)
    return [
        {"index": int(i), "label": spec.unit_label(logits_layer, int(i)), "probability": round(float(p), 5),
         "logit": round(float(logits[i]), 4)}
        for p, i in zip(top.values, top.indices)
    ]


def _top_units(store: Store, layer: LayerSpec, values: torch.Tensor, side: int) -> list[dict]:
    """The layer's most active units on the image, their heatmaps in the blob store."""
    best = values.flatten(1).amax(dim=1).topk(min(TOP_UNITS, layer.channels))
    pictures = heatmaps(values[best.indices], layer, side)
    units = []
    for rank, (value, unit) in enumerate(zip(best.values.tolist(), best.indices.tolist())):
        position = int(values[unit].argmax())
        units.append({
            "layer": layer.name, "unit": unit, "rank": rank, "activation": round(value, 4),
            "y": position // values.shape[2], "x": position % values.shape[2],
            "heatmap_key": store.blobs.put(pictures[rank], "png"),
        })
    return units


def _write(store: Store, spec: ModelSpec, probe: dict, units: list[dict], layers: list[str]) -> bool:
    try:
        for attempt in store.retrying():  # a stage writing beside the worker may hold the lock
            with attempt, store.transaction() as session:
                model = catalogued_model(session, spec)
                ids = unit_ids(session, model.id, layers)
                row = Probe(**probe, model_id=model.id)
                session.add(row)
                session.flush()
                session.add_all([
                    ProbeUnit(probe_id=row.id, unit_id=ids[unit["layer"], unit["unit"]], rank=unit["rank"],
                              activation=unit["activation"], y=unit["y"], x=unit["x"], heatmap_key=unit["heatmap_key"])
                    for unit in units
                ])
    except IntegrityError:
        return False  # another worker stored the same image first
    return True
