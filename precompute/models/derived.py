"""Derived layers: directions in a layer's activation space, run as units like any other (issue 22).

A factorization (`precompute.stages.factors`) turns a base layer's post-ReLU
activations into codes over a set of directions: NMF's groups (Building
Blocks) or a sparse autoencoder's dictionary features. `Factored` wraps a
network so that every stage asks it for ``mixed4c_nmf`` as it asks for
``mixed4c``: the base layer is computed and encoded on the way, position by
position, so examples, tuning and labels need no code of their own.

- NMF: the code of an activation vector ``a`` on fixed components ``H`` is
  ``argmin_{w >= 0} |a - w H|^2`` (what scikit-learn's ``NMF.transform``
  solves), found here by accelerated projected gradient (FISTA) in torch, so
  it runs batched on the device.
- A top-k dictionary: the feature's encoder activation
  ``W_enc (a / scale - b_dec) + b_enc``, before the top-k selection, is the
  layer's "pre-ReLU" value (where a feature is strongest it is among the k);
  `SAECode.sparse` is the top-k code the dictionary reconstructs from.

Renders do not go through the codes: a direction is rendered with Lucid's
``direction`` objective on its base layer (`direction_vectors`).
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from sqlalchemy import select
from torch import Tensor, nn

from app.core.store import Factorization, Layer, Model, Store
from app.core.zoo import LayerSpec
from app.core.zoo.spec import derived_layer
from precompute.models.base import Network, Piece, Sink

#: Projected-gradient steps of an NMF code; the tests hold it to scikit-learn's own solution.
NMF_ITERATIONS = 200


def _positions(post: Tensor) -> Tensor:
    """(B, C, H, W) -> (B*H*W, C)."""
    return post.permute(0, 2, 3, 1).reshape(-1, post.shape[1])


def _grid(rows: Tensor, like: Tensor) -> Tensor:
    """(B*H*W, K) -> (B, K, H, W) on ``like``'s grid."""
    batch, _, height, width = like.shape
    return rows.reshape(batch, height, width, -1).permute(0, 3, 1, 2)


class NMFCode(nn.Module):
    """Codes over fixed NMF components ``(K, C)``: non-negative least squares, per position."""

    def __init__(self, components: Tensor, iterations: int = NMF_ITERATIONS) -> None:
        super().__init__()
        components = components.float()
        gram = components @ components.T
        self.register_buffer("components", components)
        self.register_buffer("gram", gram)
        self.lipschitz = float(torch.linalg.eigvalsh(gram.double()).max().clamp(min=1e-12))
        self.iterations = iterations

    def solve(self, rows: Tensor) -> Tensor:
        """(N, C) non-negative activations -> (N, K) codes (FISTA on the least-squares objective)."""
        rows = rows.float()
        target = rows @ self.components.T
        code = (target / self.lipschitz).clamp(min=0)
        momentum, t = code, 1.0
        for _ in range(self.iterations):
            step = (momentum - (momentum @ self.gram - target) / self.lipschitz).clamp(min=0)
            t_next = (1 + (1 + 4 * t * t) ** 0.5) / 2
            momentum = step + ((t - 1) / t_next) * (step - code)
            code, t = step, t_next
        return code

    def sparse(self, rows: Tensor) -> Tensor:
        """The code a reconstruction is made from (`SAECode.sparse`'s twin): here the whole NNLS code."""
        return self.solve(rows)

    def forward(self, post: Tensor) -> Tensor:
        return _grid(self.solve(_positions(post)), post)

    def vectors(self) -> Tensor:
        """Each component as a unit vector: what is rendered and listed as "made of"."""
        return F.normalize(self.components, dim=1)

    def reconstruct(self, code: Tensor) -> Tensor:
        return code @ self.components


class SAECode(nn.Module):
    """A top-k sparse autoencoder's encoder (and decoder, for reconstructions)."""

    def __init__(self, encoder: Tensor, encoder_bias: Tensor, decoder: Tensor, decoder_bias: Tensor,
                 scale: float, k: int) -> None:
        super().__init__()
        self.register_buffer("encoder", encoder.float())
        self.register_buffer("encoder_bias", encoder_bias.float())
        self.register_buffer("decoder", decoder.float())
        self.register_buffer("decoder_bias", decoder_bias.float())
        self.scale, self.k = float(scale), int(k)

    def preactivation(self, rows: Tensor) -> Tensor:
        return (rows.float() / self.scale - self.decoder_bias) @ self.encoder.T + self.encoder_bias

    def sparse(self, rows: Tensor) -> Tensor:
        """(N, C) -> (N, F): the k largest encoder activations per position, after a ReLU; the rest zero."""
        pre = self.preactivation(rows)
        top = pre.topk(self.k, dim=1)
        return torch.zeros_like(pre).scatter_(1, top.indices, top.values.clamp(min=0))

    def reconstruct(self, code: Tensor) -> Tensor:
        """Back in the base layer's units (its scale)."""
        return (code @ self.decoder + self.decoder_bias) * self.scale

    def forward(self, post: Tensor) -> Tensor:
        """Each feature's activation as the reconstruction uses it: after top-k and its ReLU (zero where top-k did not
        select it), so a feature's top examples are positions where it is part of the code."""
        return _grid(self.sparse(_positions(post)), post)

    def vectors(self) -> Tensor:
        """Each feature's encoder row as a unit vector: the direction its activation reads (rendered)."""
        return F.normalize(self.encoder, dim=1)

    def atoms(self) -> Tensor:
        """The decoder's unit-norm atoms: what each feature writes into the base layer ("made of")."""
        return self.decoder


Code = NMFCode | SAECode


@dataclass(frozen=True)
class Factor:
    """A stored factorization: the derived layer and its code."""

    layer: LayerSpec
    code: Code

    @property
    def base(self) -> str:
        return self.layer.inputs[0]


def code_from_arrays(method: str, arrays: dict[str, np.ndarray]) -> Code:
    if method == "nmf":
        return NMFCode(torch.from_numpy(arrays["components"]))
    return SAECode(*(torch.from_numpy(arrays[name]) for name in ("encoder", "encoder_bias", "decoder", "decoder_bias")),
                   float(arrays["scale"]), int(arrays["k"]))


def arrays_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


class Factored(Network):
    """``inner`` with its derived layers appended to the spec: a derived layer's activation is its base's, encoded."""

    def __init__(self, inner: Network, factors: Iterable[Factor]) -> None:
        factors = list(factors)
        super().__init__(replace(inner.spec, layers=inner.spec.layers + tuple(f.layer for f in factors)))
        self.inner = inner
        self.factors = {factor.layer.name: factor for factor in factors}
        self.codes = nn.ModuleDict({factor.layer.name: factor.code for factor in factors})
        self.stand_ins = inner.stand_ins

    def forward(self, images: Tensor, layers: Iterable[str] | None = None, sink: Sink | None = None) -> dict[str, Tensor]:
        wanted = self.wanted(layers)
        derived = {name: self.factors[name].base for name in wanted if name in self.factors}
        asked = (wanted - set(derived)) | set(derived.values())
        found: dict[str, Tensor] = {}
        emit = sink or found.__setitem__

        def take(name: str, value: Tensor) -> None:
            if name in wanted:
                emit(name, value)
            for derived_name, base in derived.items():
                if base == name:
                    emit(derived_name, self.codes[derived_name](value.relu()))

        self.inner(images, asked, sink=take)
        return found

    def linear_map(self, source: LayerSpec, target: LayerSpec) -> tuple[Piece, ...]:
        return self.inner.linear_map(source, target)

    def approximation(self, source: LayerSpec, target: LayerSpec, indirect: bool) -> str | None:
        return self.inner.approximation(source, target, indirect)

    def spliced(self, layer: str, edit, output: str | None = None):  # noqa: ANN001, ANN201 - see Network.spliced
        return self.inner.spliced(layer, edit, output)

    def direction_vectors(self, layer: str, units: Iterable[int]) -> Tensor:
        """Unit vectors over the base layer of ``units`` of derived ``layer`` (rows, in order)."""
        vectors = self.codes[layer].vectors()
        return vectors[torch.as_tensor(list(units), device=vectors.device)]


def base_network(net: Network) -> Network:
    return net.inner if isinstance(net, Factored) else net


def stored_factors(store: Store, net: Network) -> list[Factor]:
    """Every factorization the store holds over ``net``'s layers."""
    spec = base_network(net).spec
    with store.session() as session:
        rows = session.execute(
            select(Factorization, Layer.name).join(Layer, Factorization.base_layer_id == Layer.id)
            .join(Model, Layer.model_id == Model.id).where(Model.name == spec.name).order_by(Factorization.id)
        ).all()
        found = [(row.method, row.components, row.blob_key, row.recipe_sha256, base) for row, base in rows]
    factors = []
    for method, components, key, digest, base in found:
        if base not in spec.layer_names:
            continue
        with np.load(io.BytesIO(store.blobs.get(key))) as data:
            arrays = {name: data[name] for name in data.files}
        layer = replace(derived_layer(spec.layer(base), method, components), factorization=digest)
        factors.append(Factor(layer, code_from_arrays(method, arrays)))
    return factors


def with_factors(store: Store, net: Network, device: torch.device | None = None) -> Network:
    """``net`` with the store's derived layers (``net`` itself when it has none)."""
    inner = base_network(net)
    factors = stored_factors(store, inner)
    if not factors:
        return inner
    wrapped = Factored(inner, factors)
    return wrapped.to(device) if device is not None else wrapped
