"""Probes: a user's image through the network once, its top classes and each main layer's top units.

The image is framed as the examples stage frames dataset images (the centred
square of its short side, resized to the input), so a probe's activations
compare with the unit's dataset examples. For each main layer the units with
the largest maximum (pre-ReLU) activation over the image are kept, each with
a heatmap: its activation map laid over the framed image at the positions'
true centres (offset and stride), transparent at zero and below.

Each main layer's activations are also factorized into a few *neuron groups*
(Building Blocks: non-negative matrix factorization of the post-ReLU
activations at the image's positions, scikit-learn's NMF): each group has a
spatial map over the image, drawn in its own colour, and a direction over the
layer's units that the worker renders on demand (`render_group`) with the
renderer of the units' own pictures and Lucid's direction objective.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from datetime import UTC, datetime

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from app.core.contracts import GROUP_COLOURS
from app.core.errors import MicroscopeError
from app.core.store import Layer, Probe, ProbeAblation, ProbeAttribution, ProbeGroup, ProbeRender, ProbeUnit, Store, Unit
from app.core.store.algorithms import ALGORITHMS, is_stale
from app.core.store.schema import new_probe_id
from app.core.uploads import UploadLimits, check_image
from app.core.zoo import LayerSpec, ModelSpec
from app.core.zoo.skips import has_map, layer_skips, require
from precompute.methods.attribution import IG_STEPS, METHODS, Target, attribute
from precompute.stages.examples import PREPROCESSING, input_transform
from precompute.running.recipes import ON_DEMAND, Defaults
from precompute.running.runs import catalogued_model, digested, unit_ids
from precompute.running.context import Stage

TOP_CLASSES = 5
TOP_UNITS = 8
#: Heatmaps are this colour, opaque in proportion to the activation (up to ``HEATMAP_ALPHA``).
HEATMAP_COLOUR = (255, 96, 0)
HEATMAP_ALPHA = 0.85
#: Heatmaps are stored at half the input's side (the browser scales them smoothly over the image).
HEATMAP_SIDE = 112
#: Neuron groups per layer (Building Blocks shows six), and the colour of each group's map, in order of share.
GROUPS = 6
#: Attribution maps are this colour (the units' heatmaps are orange).
ATTRIBUTION_COLOUR = (20, 110, 255)
ATTRIBUTION_RECIPE = {
    "methods": list(METHODS), "targets": "the top class (its logit) and the deepest layer's top unit (its pre-ReLU "
    "activation at its strongest position); others on demand", "integrated_gradients_steps": IG_STEPS,
    "map": "|attribution| summed over colour (Grad-CAM: its ReLU'd map, upsampled), / its 99.5th percentile",
}


def stored(store: Store, spec: ModelSpec, sha256: str) -> bool:
    with store.session() as session:
        model = catalogued_model(session, spec)
        return session.scalar(select(Probe.id).where(Probe.model_id == model.id, Probe.sha256 == sha256)) is not None


def heatmaps(maps: torch.Tensor, layer: LayerSpec, input_size: int, side: int = HEATMAP_SIDE,
             colours: list[tuple[int, int, int]] | None = None) -> list[bytes]:
    """Each of a layer's (K, H, W) maps over the input as a ``side`` px RGBA PNG, positions at their centres.

    Opacity is the activation over the map's own maximum on this image (none at zero or below); map i is
    in ``colours[i]`` (`HEATMAP_COLOUR` for all without).
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
    for number, plane in enumerate(alpha.round().to(torch.uint8).numpy()):
        rgba = np.empty((side, side, 4), dtype=np.uint8)
        rgba[..., :3] = colours[number] if colours else HEATMAP_COLOUR
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
    require(spec, "probes")
    if stored(store, spec, sha256):
        return False
    check_image(data, limits or UploadLimits.of(store.settings))  # the server checked it; a worker trusts no queue
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        image = opened.convert("RGB")
    # The network sees the framed image as 8-bit pixels, stored losslessly: maps made later read back the same input.
    tensor = (input_transform(spec)(image)[None] * 255).round() / 255
    main = [layer for layer in spec.main_layers if layer.kind != "linear"]  # layers with a map to show
    logits_layer = spec.logits
    if logits_layer is None:
        raise MicroscopeError(f"{spec.name} has no classifier (its output is a feature map): a probe reads its classes")
    with torch.no_grad():
        activations = net(tensor.to(device), [layer.name for layer in main] + [logits_layer.name])
    classes = _top_classes(spec, logits_layer, activations[logits_layer.name][0].float().cpu())
    framed = Image.fromarray((tensor[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
    buffer = io.BytesIO()
    framed.save(buffer, "WEBP", lossless=True, method=2)
    image_key = store.blobs.put(buffer.getvalue(), "webp")
    units = [row for layer in main for row in _top_units(store, layer, activations[layer.name][0].float().cpu(), spec.input_size)]
    groups = [row for layer in main for row in _groups(store, layer, activations[layer.name][0].float().cpu(), spec.input_size)]
    deepest = next((unit for unit in reversed(units) if unit["rank"] == 0 and unit["layer"] != main[0].name), None)
    targets = [Target(logits_layer.name, classes[0]["index"])]
    if deepest is not None:
        targets.append(Target(deepest["layer"], deepest["unit"], deepest["y"], deepest["x"]))
    maps = [row for target in targets for row in attributions(stage, tensor[0], target, skip_wrong=True)]
    ablated = _ablated_classes(stage, tensor, units, logits_layer)
    store.blobs.flush()  # blobs are durable before any row points at them
    recipe = {
        "algorithm": ALGORITHMS["probe"], "weights_sha256": weights_sha256, "input": PREPROCESSING.format(size=spec.input_size),
        "activation": "maximum of the pre-ReLU activation over positions", "top_units": TOP_UNITS,
        "top_classes": TOP_CLASSES, "heatmap": "activation / the unit's maximum on this image, at position centres",
        "heatmap_side": HEATMAP_SIDE,
        "groups": {"count": GROUPS, "of": "the layer's ReLU output at every position of the image, (H x W, C)",
                   "method": "scikit-learn NMF in float32, init nndsvda, Frobenius loss, at most 400 iterations, random_state 0",
                   "vector": "the component, unit norm", "share": "its part of the reconstruction's sum",
                   "map": "the group's coefficient at each position / its maximum on this image"},
        "framed": "8-bit RGB, stored as lossless WebP", "attribution": ATTRIBUTION_RECIPE,
        "ablated": "the top classes with each layer's top units set to zero after its ReLU",
    }
    probe = {"sha256": sha256, "public_id": public_id or new_probe_id(), "image_key": image_key, "width": image.width,
             "height": image.height, "classes": classes, "recipe": recipe, "created_at": datetime.now(UTC).replace(tzinfo=None)}
    return _write(store, spec, probe, units, groups, maps, ablated, [layer.name for layer in main])


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


def neuron_groups(values: torch.Tensor, count: int = GROUPS) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """A layer's (C, H, W) activations on one image as at most ``count`` neuron groups: their (K, H, W) maps,
    (K, C) unit-norm directions and shares of the reconstruction, largest share first, and the fraction
    of the activations' variance over positions that the groups leave unexplained."""
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    channels, height, width = values.shape
    data = values.clamp(min=0).reshape(channels, -1).T.float().numpy()  # (positions, channels); float32 fits twice as fast
    count = min(count, channels, len(data))
    if count < 1 or not data.any():
        return np.zeros((0, height, width)), np.zeros((0, channels)), np.zeros(0), 1.0
    model = NMF(n_components=count, init="nndsvda", max_iter=400, random_state=0)
    with warnings.catch_warnings():  # a fit stopped at max_iter is still a fit: its unexplained variance says how good
        warnings.simplefilter("ignore", ConvergenceWarning)
        maps = model.fit_transform(data)
    vectors = model.components_
    norms = np.linalg.norm(vectors, axis=1)
    kept = norms > 0
    maps, vectors, norms = maps[:, kept], vectors[kept], norms[kept]
    maps, vectors = maps * norms, vectors / norms[:, None]
    mass = maps.sum(axis=0) * vectors.sum(axis=1)
    shares = mass / max(mass.sum(), 1e-12)
    order = np.argsort(-shares, kind="stable")
    data, maps, vectors = data.astype(np.float64), maps.astype(np.float64), vectors.astype(np.float64)
    centred = ((data - data.mean(axis=0)) ** 2).sum()
    fvu = float(((data - maps @ vectors) ** 2).sum() / centred) if centred > 0 else 0.0
    return maps[:, order].T.reshape(-1, height, width), vectors[order], shares[order], fvu


def _groups(store: Store, layer: LayerSpec, values: torch.Tensor, side: int) -> list[dict]:
    """The layer's neuron groups on the image, their maps in the blob store."""
    maps, vectors, shares, fvu = neuron_groups(values)
    pictures = heatmaps(torch.from_numpy(maps).float(), layer, side, colours=list(GROUP_COLOURS)) if len(maps) else []
    return [
        {"layer": layer.name, "group": number, "share": round(float(shares[number]), 4), "fvu": round(fvu, 4),
         "vector": [round(float(v), 5) for v in vectors[number]], "heatmap_key": store.blobs.put(picture, "png")}
        for number, picture in enumerate(pictures)
    ]


def attributions(stage: Stage, image: torch.Tensor, target: Target, methods: tuple[str, ...] = METHODS,
                 cam_layer: str | None = None, skip_wrong: bool = False) -> list[dict]:
    """Each method's map of ``target`` on the framed image (3, H, W), its picture in the blob store; with
    ``skip_wrong`` a method the target does not allow (Grad-CAM with no layer before it) is left out."""
    rows = []
    for method in methods:
        try:
            values, params = attribute(stage.net, image.to(stage.device), target, method, cam_layer)
        except MicroscopeError:
            if skip_wrong:
                continue
            raise
        rows.append({"layer": target.layer, "unit": target.index, "y": target.y, "x": target.x, "method": method,
                     "at": params.get("layer", "") if method == "grad_cam" else "",
                     "heatmap_key": stage.store.blobs.put(attribution_picture(values), "png"),
                     "params": {**params, "algorithm": ALGORITHMS["attribution"]}})
    return rows


def attribution_picture(values: np.ndarray, side: int = HEATMAP_SIDE) -> bytes:
    """An (H, W) map of non-negative attributions as a ``side`` px RGBA PNG: area-averaged, opaque in proportion to
    the value over its 99.5th percentile (a few extreme pixels do not wash out the rest)."""
    pooled = F.interpolate(torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[None, None], size=(side, side),
                           mode="area")[0, 0].clamp(min=0)
    top = float(torch.quantile(pooled.flatten(), 0.995)) if pooled.max() > 0 else 1.0
    alpha = ((pooled / max(top, 1e-12)).clamp(max=1) * (HEATMAP_ALPHA * 255)).round().to(torch.uint8).numpy()
    rgba = np.empty((side, side, 4), dtype=np.uint8)
    rgba[..., :3] = ATTRIBUTION_COLOUR
    rgba[..., 3] = alpha
    out = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(out, "PNG", compress_level=1)
    return out.getvalue()


def _ablated_classes(stage: Stage, tensor: torch.Tensor, units: list[dict], logits_layer: LayerSpec) -> dict[str, list]:
    """Per main layer, the probe's top classes with that layer's top units set to zero (where the network can
    edit the layer: `Network.spliced`)."""
    from precompute.live.ablation import editor
    from precompute.models.derived import base_network

    net = base_network(stage.net)
    out = {}
    for layer in dict.fromkeys(unit["layer"] for unit in units):
        chosen = [unit["unit"] for unit in units if unit["layer"] == layer]
        try:
            forward = net.spliced(layer, editor("zero", chosen))
        except MicroscopeError:
            continue
        with torch.no_grad():
            logits = forward(tensor.to(stage.device))[0].float().cpu()
        out[layer] = _top_classes(stage.spec, logits_layer, logits)
    return out


def _write(store: Store, spec: ModelSpec, probe: dict, units: list[dict], groups: list[dict], maps: list[dict],
           ablated: dict[str, list], layers: list[str]) -> bool:
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
                layer_ids = dict(session.execute(select(Layer.name, Layer.id).where(Layer.model_id == model.id,
                                                                                    Layer.name.in_(layers))).all())
                session.add_all([
                    ProbeGroup(probe_id=row.id, layer_id=layer_ids[group["layer"]], group=group["group"],
                               share=group["share"], fvu=group["fvu"], vector=group["vector"],
                               heatmap_key=group["heatmap_key"])
                    for group in groups
                ])
                _add_maps(session, model.id, row.id, maps)
                session.add_all([ProbeAblation(probe_id=row.id, layer_id=layer_ids[layer], classes=classes)
                                 for layer, classes in ablated.items()])
    except IntegrityError:
        return False  # another worker stored the same image first
    return True


def _add_maps(session, model_id: int, probe_row: int, maps: list[dict]) -> None:  # noqa: ANN001
    ids = unit_ids(session, model_id, sorted({row["layer"] for row in maps}))
    session.add_all([
        ProbeAttribution(probe_id=probe_row, unit_id=ids[row["layer"], row["unit"]], y=row["y"], x=row["x"],
                         method=row["method"], at=row["at"], heatmap_key=row["heatmap_key"], params=row["params"])
        for row in maps
    ])


# On demand ---------------------------------------------------------------------------------------


def _framed(store: Store, image_key: str) -> torch.Tensor:
    """A probe's framed image as the network saw it, (3, H, W) in [0, 1] (stored losslessly)."""
    with Image.open(io.BytesIO(store.blobs.get(image_key))) as framed:
        return torch.from_numpy(np.asarray(framed.convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)


def _insert(store: Store, probe_id: str, row_id: int, add: Callable) -> bool:
    """Add a probe's on-demand rows (``add(session)``) unless it was deleted meanwhile; False when another worker
    stored them first."""
    try:
        for attempt in store.retrying():
            with attempt, store.transaction() as session:
                if session.get(Probe, row_id) is None:
                    raise MicroscopeError(f"the probe {probe_id} was deleted")
                add(session)
    except IntegrityError:
        return False
    return True


def attribute_probe(stage: Stage, probe_id: str, layer_name: str, index: int, cam_layer: str | None = None) -> bool:
    """The attribution maps of one of a probe's listed targets (a top class, or a unit it lists, at its strongest
    position): every method, or Grad-CAM at ``cam_layer``; False when they were stored already."""
    store, spec = stage.store, stage.spec
    logits = next(layer.name for layer in spec.layers if layer.kind == "logits")
    with store.session() as session:
        probe = session.scalar(select(Probe).where(Probe.public_id == probe_id))
        if probe is None:
            raise MicroscopeError(f"no stored probe {probe_id} (deleted, or never made)")
        if layer_name == logits:
            if index not in [c["index"] for c in probe.classes]:
                raise MicroscopeError(f"class {index} is not among the probe's top classes")
            target = Target(logits, index)
        else:
            listed = session.execute(
                select(ProbeUnit.y, ProbeUnit.x).join(Unit, ProbeUnit.unit_id == Unit.id).join(Layer, Unit.layer_id == Layer.id)
                .where(ProbeUnit.probe_id == probe.id, Layer.name == layer_name, Unit.index == index)).first()
            if listed is None:
                raise MicroscopeError(f"{layer_name}:{index} is not among the probe's units")
            target = Target(layer_name, index, listed.y, listed.x)
        have = {(method, at) for method, at in session.execute(
            select(ProbeAttribution.method, ProbeAttribution.at).join(Unit, ProbeAttribution.unit_id == Unit.id)
            .join(Layer, Unit.layer_id == Layer.id)
            .where(ProbeAttribution.probe_id == probe.id, Layer.name == layer_name, Unit.index == index))}
        row_id, model_id, image_key = probe.id, probe.model_id, probe.image_key
    if cam_layer is not None:
        if cam_layer not in spec.layer_names:
            raise MicroscopeError(f"{spec.name} has no layer {cam_layer!r} for Grad-CAM")
        methods: tuple[str, ...] = () if ("grad_cam", cam_layer) in have else ("grad_cam",)
    else:
        methods = tuple(m for m in METHODS if not any(method == m for method, _ in have))
    if not methods:
        return False
    image = _framed(store, image_key)
    maps = attributions(stage, image, target, methods, cam_layer, skip_wrong=cam_layer is None)
    store.blobs.flush()
    return _insert(store, probe_id, row_id, lambda session: _add_maps(session, model_id, row_id, maps))


def render_group(stage: Stage, probe_id: str, layer_name: str, group: int, defaults: Defaults = ON_DEMAND,
                 poll: Callable[[], None] | None = None) -> bool:
    """Render the direction of one of a probe's neuron groups (the units' own renderer and on-demand recipe,
    Lucid's direction objective on the layer); False when it was rendered already."""
    from precompute.optvis import objectives
    from precompute.optvis.param import PARAMETERIZATIONS
    from precompute.optvis.render import render
    from precompute.stages.vis import encode_render, fitted, on_demand_config, pixels_of, recipe, unit_seed

    store, spec = stage.store, stage.spec
    layer = spec.layer(layer_name)
    with store.session() as session:
        found = session.execute(
            select(Probe.id, ProbeGroup.layer_id, ProbeGroup.vector).join(ProbeGroup, ProbeGroup.probe_id == Probe.id)
            .join(Layer, ProbeGroup.layer_id == Layer.id)
            .where(Probe.public_id == probe_id, Layer.name == layer_name, ProbeGroup.group == group)
        ).first()
        if found is None:
            raise MicroscopeError(f"the probe {probe_id} has no group {group} in {layer_name} (deleted, or never made)")
        row_id, layer_id, vector = found
        if session.scalar(select(ProbeRender.id).where(ProbeRender.probe_id == row_id, ProbeRender.layer_id == layer_id,
                                                       ProbeRender.kind == "group", ProbeRender.index == group)):
            return False
    config = on_demand_config(layer, [group], "channel", defaults, batch=1, input_size=stage.spec.input_size)
    seed = unit_seed(config.seed, layer_name, group, "group")
    params = {key: value for key, value in recipe(config, stage.spec, layer, "channel", stage.weights_sha256, stage.device).items()
              if key != "recipe_sha256"}
    params = digested({**params, "technique": "group", "activation": f"Lucid's direction objective on {layer_name} "
                       "after its ReLU, averaged over positions (the probe's neuron group)",
                       "probe_algorithm": ALGORITHMS["probe"], "unit_seeds": [seed]})
    rendered = render(stage.net, objectives.direction(layer_name, torch.tensor([vector])),
                      PARAMETERIZATIONS[params["parameterization"]](params["size"], channels=stage.spec.channels), [seed],
                      fitted(stage.spec, config).transforms, steps=config.steps,
                      device=stage.device, learning_rate=config.learning_rate, precision=config.precision, poll=poll)
    key = store.blobs.put(encode_render(pixels_of(rendered.images)), "webp")
    store.blobs.flush()
    objective = round(float(rendered.objective[0]), 4)
    return _insert(store, probe_id, row_id, lambda session: session.add(ProbeRender(
        probe_id=row_id, layer_id=layer_id, kind="group", index=group, image_key=key, objective=objective, recipe=params)))


def render_caricature(stage: Stage, probe_id: str, layer_name: str, defaults: Defaults = ON_DEMAND,
                      poll: Callable[[], None] | None = None) -> bool:
    """The probe's caricature at one main layer (`precompute.live.caricature`: Lucid's recipe with the units' renderer's
    parameterization, transforms and on-demand size and steps); False when it was made already."""
    from precompute.live.caricature import COSSIM_POW, caricature, lucid_transforms
    from precompute.optvis.render import LEARNING_RATE
    from precompute.stages.vis import encode_render, unit_seed

    store, spec = stage.store, stage.spec
    layer = spec.layer(layer_name)
    if not has_map(layer):
        raise MicroscopeError(f"{layer_name} has no caricature: {layer_skips(layer)['caricature']}")
    with store.session() as session:
        probe = session.scalar(select(Probe).where(Probe.public_id == probe_id))
        if probe is None:
            raise MicroscopeError(f"no stored probe {probe_id} (deleted, or never made)")
        layer_id = session.scalar(select(Layer.id).where(Layer.model_id == probe.model_id, Layer.name == layer_name))
        made = session.scalar(select(ProbeRender).where(ProbeRender.probe_id == probe.id, ProbeRender.layer_id == layer_id,
                                                        ProbeRender.kind == "caricature"))
        if made is not None and not is_stale("caricature", made.recipe):
            return False
        stale = None if made is None else made.id  # made by an older recipe: replaced below
        row_id, image_key = probe.id, probe.image_key
    image = _framed(store, image_key)
    steps, size, seed = defaults.steps_for(layer, spec.input_size), spec.input_size, unit_seed(0, layer_name, 0, "caricature")
    transforms = lucid_transforms(spec.input_size)
    result, end, start = caricature(stage.net, image, layer_name, size, steps, seed, transforms, device=stage.device,
                                    poll=poll)
    pixels = (result.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)[None]
    key = store.blobs.put(encode_render(pixels), "webp")
    store.blobs.flush()
    params = digested({
        "technique": "caricature", "algorithm": ALGORITHMS["caricature"], "layer": layer_name,
        "probe_algorithm": ALGORITHMS["probe"],
        "objective": "Lucid's dot_compare: dot * max(0.1, dot / |optimized|) ** cossim_pow, after the ReLU, the probe's "
                     "image transformed with the same draw each step", "cossim_pow": COSSIM_POW,
        "parameterization": "fourier", "decorrelated_color": True, "size": size, "steps": steps, "optimizer": "adam",
        "learning_rate": LEARNING_RATE, "transforms": transforms.describe(), "seed": seed, "precision": "fp32",
        "differs_from_lucid": f"{steps} steps (Lucid's recipe: 512)",
        "weights_sha256": stage.weights_sha256, "start_objective": round(start, 4),
    })

    def insert(session) -> None:  # noqa: ANN001
        if stale is not None:
            session.execute(delete(ProbeRender).where(ProbeRender.id == stale))
        session.add(ProbeRender(probe_id=row_id, layer_id=layer_id, kind="caricature", index=0, image_key=key,
                                objective=round(end, 4), recipe=params))

    return _insert(store, probe_id, row_id, insert)


def probe_contributions(stage: Stage, probe_id: str, layer_name: str) -> bool:
    """Building Blocks' spatial attribution for each of a probe's listed units of ``layer_name``: the units of the
    layer before that add most to it at its strongest position (`precompute.methods.attribution.contributions`); False
    when they were stored already."""
    from precompute.methods.attribution import contributions

    store = stage.store
    with store.session() as session:
        probe = session.scalar(select(Probe).where(Probe.public_id == probe_id))
        if probe is None:
            raise MicroscopeError(f"no stored probe {probe_id} (deleted, or never made)")
        rows = session.execute(
            select(ProbeUnit.id, Unit.index, ProbeUnit.y, ProbeUnit.x, ProbeUnit.contributions)
            .join(Unit, ProbeUnit.unit_id == Unit.id).join(Layer, Unit.layer_id == Layer.id)
            .where(ProbeUnit.probe_id == probe.id, Layer.name == layer_name).order_by(ProbeUnit.rank)).all()
        if not rows:
            raise MicroscopeError(f"the probe {probe_id} lists no unit of {layer_name}")
        if all(row.contributions is not None for row in rows):
            return False
        image_key = probe.image_key
    image = _framed(store, image_key)
    _, found = contributions(stage.net, image.to(stage.device), [Target(layer_name, row.index, row.y, row.x) for row in rows])
    for attempt in store.retrying():
        with attempt, store.transaction() as session:
            for row, listed in zip(rows, found):
                unit = session.get(ProbeUnit, row.id)
                if unit is None:
                    raise MicroscopeError(f"the probe {probe_id} was deleted")
                unit.contributions = listed
    return True
