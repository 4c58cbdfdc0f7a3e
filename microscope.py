"""The microscope from Python, for notebooks (issue 31).

Read a store the way its pages do::

    import microscope
    scope = microscope.open("microscope-data")
    scope.models()                                  # ['inceptionv1_caffe', ...]
    unit = scope.unit("inceptionv1_caffe", "mixed4c", 447)
    unit                                            # in Jupyter: its pictures, examples and top connections
    unit.pictures["channel"], unit.examples[0], unit.labels, unit.inputs[:5]

Or work on a module in memory, with no store (the project's renderer, its recipes and speed)::

    image = microscope.render(model, "conv2:5", input_size=32, mean=[0.1307], std=[0.3081])
    top = microscope.examples(model, "my-images/", "conv2:5", input_size=32, mean=[0.1307], std=[0.3081])
    microscope.precompute(model, "my-images/", data="my-store", input_size=32, mean=[0.1307], std=[0.3081])

Layers are named as the pages name them (module paths, dots as underscores: ``layer1_0_conv2``; a
``Sequential``'s ``"3"``); ``**described`` takes the names file's fields (`precompute.models.traced.Description`:
``input_size``, ``mean``, ``std``, ``channels``, ``classes``, ``names``...). Reading a store needs no torch; the
functions on a module need the ``precompute`` extra.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from app.core.settings import Settings
from app.core.store import Store

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Microscope", "UnitView", "Example", "open", "render", "examples", "precompute"]

#: How many examples and connections a unit shows in a notebook.
SHOWN = 8


@dataclass(frozen=True)
class Example:
    """One dataset example of a unit: the crop of its receptive field (or the framed image), where it came from."""

    image: Image.Image
    activation: float
    path: str
    #: The position of the unit's strongest value in its map (y, x).
    position: tuple[int, int] = (0, 0)


@dataclass
class UnitView:
    """A stored unit as its page shows it: ``page`` is the page's own data (its JSON twin as a dataclass)."""

    model: str
    layer: str
    index: int
    page: Any
    _store: Store = field(repr=False)

    @property
    def title(self) -> str:
        return self.page.title

    @property
    def pictures(self) -> dict[str, Image.Image]:
        """Its feature visualizations by technique (channel, neuron, negative, diversity...)."""
        return {picture.technique: self._image(picture.image_url) for picture in self.page.visualizations}

    @property
    def examples(self) -> list[Example]:
        """Its top dataset examples, strongest first (the crops of their receptive fields)."""
        return [Example(self._image(found.crop_url), found.activation, found.image, (found.y, found.x))
                for found in self.page.top_examples]

    @property
    def labels(self) -> list[str]:
        """Its clear concept labels, best first (empty: none, or the labels stage has not run)."""
        return [label.name for label in self.page.labels]

    @property
    def inputs(self) -> list[tuple[str, int, float]]:
        """The units that feed it most, strongest first: (layer, unit, weight)."""
        return _edges(self.page.inputs)

    @property
    def outputs(self) -> list[tuple[str, int, float]]:
        """The units it feeds most, strongest first: (layer, unit, weight)."""
        return _edges(self.page.outputs)

    def _image(self, url: str) -> Image.Image:
        key = url.rsplit("/", 1)[-1]
        with Image.open(io.BytesIO(self._store.blobs.get(key))) as image:
            return image.convert("RGB")

    def _repr_html_(self) -> str:
        parts = [f"<h4>{html.escape(self.title)}</h4>"]
        if self.labels:
            parts.append(f"<p>Its top examples share: {html.escape(', '.join(self.labels))}</p>")
        parts.append("<div>" + "".join(
            f'<figure style="display:inline-block;margin:4px"><img src="{_data_url(image)}" width="128">'
            f"<figcaption>{html.escape(technique)}</figcaption></figure>"
            for technique, image in self.pictures.items()) + "</div>")
        parts.append("<p>Top dataset examples</p><div>" + "".join(
            f'<img src="{_data_url(example.image)}" width="64" title="{example.activation:.3g} {html.escape(example.path)}" '
            'style="margin:2px">' for example in self.examples[:SHOWN]) + "</div>")
        for title, edges in (("Inputs", self.inputs), ("Outputs", self.outputs)):
            if edges:
                parts.append(f"<p>{title}: " + ", ".join(
                    f"{html.escape(layer)}:{unit} ({weight:+.3g})" for layer, unit, weight in edges[:SHOWN]) + "</p>")
        return "".join(parts)


class Microscope:
    """An open store, read as its pages read it."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def models(self) -> list[str]:
        with self.store.engine.connect() as connection:
            return sorted(self._catalog(connection).models)

    def layers(self, model: str) -> list[str]:
        with self.store.engine.connect() as connection:
            return [layer.name for layer in self._catalog(connection).model(model).layers]

    def unit(self, model: str, layer: str, index: int) -> UnitView:
        from app import browse

        with self.store.engine.connect() as connection:
            page = browse.unit_page(self._catalog(connection), connection, model, layer, index)
        return UnitView(model, layer, index, page, self.store)

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Microscope:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _catalog(connection: Any) -> Any:
        from app.catalog import Catalog

        return Catalog.load(connection)


def open(data: str | Path = "microscope-data", database_url: str | None = None) -> Microscope:  # noqa: A001
    """The store at ``data`` (a directory made by ``microscope precompute``), read-only."""
    return Microscope(Store.open(Settings.load(Path(data), database_url), readonly=True))


def render(model: nn.Module, target: str, steps: int = 512, size: int = 224, seed: int = 0, technique: str = "channel",
           device: str = "cpu", **described: Any) -> Image.Image:
    """A feature visualization of ``target`` (``"layer:unit"``) of an in-memory ``model``: the project's renderer
    and recipe (Lucid's Fourier basis and transforms, sized to the network's input), ``steps`` Adam steps."""
    from precompute.optvis.param import PARAMETERIZATIONS
    from precompute.optvis.render import render as optimize
    from precompute.optvis.transform import fit
    from precompute.stages.vis import objective_for, parameterization_of, pixels_of

    net, layer, unit = _target(model, target, described)
    sized = fit(net.spec.input_size, net.spec.fixed_input, size)
    with _frozen(net):
        rendered = optimize(net, objective_for(technique, layer, [unit], net.spec.spatial_source(layer).name),
                            PARAMETERIZATIONS[parameterization_of(technique)](sized.size, channels=net.spec.channels),
                            [seed], sized.transforms, steps=steps, device=device)
    return Image.fromarray(pixels_of(rendered.images)[0])


def examples(model: nn.Module, images: str | Path, target: str, k: int = 9, batch: int = 32,
             **described: Any) -> list[Example]:
    """The ``k`` images of the folder ``images`` on which ``target`` (``"layer:unit"``) is strongest (its largest
    pre-ReLU value over positions), strongest first, each as the network saw it; no store needed."""
    import torch

    from precompute.stages.examples import input_transform
    from precompute.running.images import Planes, list_images, load

    net, layer, unit = _target(model, target, described)
    frame = input_transform(net.spec)
    found: list[tuple[float, str, tuple[int, int], torch.Tensor]] = []
    files = list_images(Path(images), net.spec)
    for start in range(0, len(files), batch):
        chunk, tensors = [], []
        for file in files[start:start + batch]:
            try:
                tensors.append(frame(load(file)))
                chunk.append(file)
            except OSError:  # one odd image does not stop the search
                continue
        if not tensors:
            continue
        with torch.no_grad():
            values = net(torch.stack(tensors), [layer.name])[layer.name][:, unit].float()
        flat = values.reshape(len(chunk), -1)
        best, where = flat.max(dim=1)
        width = values.shape[-1] if values.dim() == 3 else 1
        for file, value, position, tensor in zip(chunk, best.tolist(), where.tolist(), tensors):
            found.append((value, file.path, divmod(position, width), tensor))
        found = sorted(found, key=lambda item: -item[0])[:k]
    def shown(tensor: torch.Tensor) -> Image.Image:  # a multispectral input in false colour
        if tensor.shape[0] == 3:
            return Image.fromarray((tensor.permute(1, 2, 0).numpy() * 255).round().astype("uint8"))
        return Planes(tensor.permute(1, 2, 0).numpy()).display()

    return [Example(shown(tensor), value, path, position) for value, path, position, tensor in found]


def precompute(model: nn.Module, images: str | Path, data: str | Path = "microscope-data", steps: int = 128,
               size: int = 128, device: str = "cpu", **described: Any) -> Microscope:
    """An in-memory ``model`` into the store at ``data`` with the CLI's stages (catalog, examples, labels, circuits
    and the channel render of every main layer's first units), then the store opened; a rerun skips what is stored.
    The weights are named in every recipe by the sha256 of their tensors."""
    import torch

    from precompute.stages.catalog import catalog
    from precompute.stages.circuits import run_circuits
    from precompute.stages.examples import ExamplesConfig, run_examples
    from precompute.stages.labels import run_labels
    from precompute.running.selection import units_per_layer
    from precompute.running.context import Stage
    from precompute.stages.vis import VisConfig, run_vis

    net = _network(model, described)
    digest = hashlib.sha256()
    for key, value in sorted(net.module.state_dict().items()):
        digest.update(key.encode() + value.detach().cpu().contiguous().numpy().tobytes())
    root = Path(images)
    settings = Settings.load(Path(data))
    with Store.open(settings, create=True) as store, _frozen(net):
        spec = net.spec
        catalog(store, spec, weights_sha256=digest.hexdigest())
        stage = Stage(store, net, digest.hexdigest(), torch.device(device), progress=False)
        run_examples(stage, root, ExamplesConfig(layers=spec.layers))
        run_labels(store, spec, root, spec.layers)
        run_circuits(stage, spec.layers)
        main = tuple(spec.main_layers)
        run_vis(stage, VisConfig(layers=main, units=units_per_layer(main, "0:4", explicit=False),
                                 techniques=("channel",), steps=steps, size=size, batch=8))
    return open(data)


def _network(model: nn.Module, described: dict[str, Any]) -> Any:
    from precompute.models.traced import Description, TracedNetwork

    fields = {key: tuple(value) if isinstance(value, list) else value for key, value in described.items()}
    fields.setdefault("name", type(model).__name__.lower())
    fields.setdefault("classes", "none")
    return TracedNetwork(model, Description(**fields))


def _target(model: nn.Module, target: str, described: dict[str, Any]) -> tuple[Any, Any, int]:
    from app.core.errors import MicroscopeError

    net = _network(model, described)
    name, _, unit = target.rpartition(":")
    if not name or not unit.isdigit():
        raise MicroscopeError(f"{target!r}: name a unit as 'layer:unit' (layers: {', '.join(net.spec.layer_names)})")
    layer = net.spec.layer(name if name in net.spec.layer_names else name.replace(".", "_"))
    if int(unit) >= layer.channels:
        raise MicroscopeError(f"{layer.name} has {layer.channels} units: no unit {unit}")
    return net, layer, int(unit)


class _frozen:
    """The module's parameters without gradients while the network runs, as they were after."""

    def __init__(self, net: Any) -> None:
        self.parameters = list(net.parameters())
        self.flags = [parameter.requires_grad for parameter in self.parameters]

    def __enter__(self) -> None:
        for parameter in self.parameters:
            parameter.requires_grad_(False)

    def __exit__(self, *exc: object) -> None:
        for parameter, flag in zip(self.parameters, self.flags):
            parameter.requires_grad_(flag)


def _edges(groups: list[Any]) -> list[tuple[str, int, float]]:
    edges = [(edge.unit.layer, edge.unit.index, edge.weight) for group in groups for edge in group.edges]
    return sorted(edges, key=lambda edge: -abs(edge[2]))


def _data_url(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()
