"""The circuits stage: the strongest weights into and out of every unit.

Three kinds of layer pairs (Distill, "Visualizing Weights"), whatever the
network; the network's `linear_map` gives each pair's kernels
(`precompute.models`):

- main pairs, ``previous -> layer`` for every main layer and the logits:
  expanded weights across each block (an inception block's bottleneck
  composed with its spatial convolution, a residual block's path plus its
  identity) and across the pools between blocks;
- indirect pairs, ``previous.previous -> layer`` for every spatial main layer
  two past the input: the main pair composed with the one before it, expanded
  through the block between (the Circuits thread's "indirect" weights);
- branch pairs, ``input -> branch`` for every branch layer: the direct
  convolution (through the pools in front of it).

Edges are ranked by strength, the L2 norm of the (expanded) kernel, as the
Circuits thread's neuron pages do: a kernel with opposite-sign parts is
strong even when its parts cancel in the sum. Every target unit keeps its 50
strongest inputs, and every source unit of a main pair (or a bottleneck) its
50 strongest outputs. Each edge stores the summed weight (its sign says
excitatory or inhibitory), the norm, and for direct and expanded edges the
kernel as numbers and a tiny red (positive) / blue (negative) image of it;
indirect kernels (up to 19x19) and kernels wider than 11x11 keep only their
sum and norm. Each pair is
written in its own transaction under its own run, so an interrupted stage
resumes at the first pair not written.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from app.core.store import Edge, Store
from app.core.store.algorithms import ALGORITHMS
from app.core.zoo import LayerSpec, ModelSpec
from precompute.models.base import Network, Piece
from precompute.running.runs import catalogued_model, digested, finished_recipes, finish_run, progress_bar, replace_rows, share, start_run, unit_ids
from precompute.running.context import Stage

TOP = 50
#: Colour of the strongest positive and negative weights (ColorBrewer RdBu ends).
POSITIVE = np.array([178, 24, 43], dtype=np.float32)
NEGATIVE = np.array([33, 102, 172], dtype=np.float32)
#: Shades per sign in kernel images: identical shaded kernels share one blob.
LEVELS = 8
#: Widest kernel whose numbers and picture an edge keeps (InceptionV1 needs 11; VGG's fc6 reads 14x14 of conv5_4).
MAX_STORED_KERNEL = 11


@dataclass(frozen=True)
class Pair:
    source: LayerSpec
    target: LayerSpec
    #: Whether source units keep their strongest outputs into this pair's target layer.
    outputs: bool
    #: Composed through the main layer between source and target.
    indirect: bool = False


@dataclass(frozen=True)
class Expanded:
    """A pair's linear map: its kernels, piece by piece (`Network.linear_map`)."""

    pair: Pair
    pieces: tuple[Piece, ...]

    @property
    def keeps_kernels(self) -> bool:
        """Whether edges store their kernel's numbers and picture (indirect and very wide ones keep sum and norm)."""
        return not self.pair.indirect and max(piece.kernel.size for piece in self.pieces) <= MAX_STORED_KERNEL


def expand(net: Network, pair: Pair) -> Expanded:
    return Expanded(pair, tuple(net.linear_map(pair.source, pair.target)))


def _spatial(layer: LayerSpec) -> bool:
    return layer.kind not in ("linear", "logits")


def pairs(spec: ModelSpec, layers: Sequence[LayerSpec]) -> list[Pair]:
    """Every pair whose target is one of ``layers``, in network order (a layer's indirect pair after its main one).

    Indirect pairs are made between spatial layers only: into a fully connected layer the composed
    kernel would span the whole map for every pair of units.
    """
    found = []
    for layer in layers:
        if layer.kind == "branch":
            found += [Pair(spec.layer(name), layer, outputs=spec.layer(name).kind == "branch") for name in layer.inputs]
        elif layer.previous is not None:
            previous = spec.layer(layer.previous)
            found.append(Pair(previous, layer, outputs=True))
            if _spatial(layer) and _spatial(previous) and previous.previous is not None:
                found.append(Pair(spec.layer(previous.previous), layer, outputs=False, indirect=True))
    return found


def _strongest(norms: Tensor, k: int) -> Tensor:
    """(row, column) of each row's k strongest entries (largest norm)."""
    values, columns = norms.topk(min(k, norms.shape[1]), dim=1)
    rows = torch.arange(norms.shape[0])[:, None].expand_as(columns)
    keep = values > 0
    return torch.stack([rows[keep], columns[keep]], dim=1)


def select_edges(expanded: Expanded, k: int = TOP) -> list[tuple[int, int]]:
    """(target, source) of every edge kept for a pair, sorted: each target's k strongest inputs by L2 norm
    (and, for pairs that keep outputs, each source's k strongest outputs)."""
    norms = torch.cat([piece.kernel.norms() for piece in expanded.pieces])
    chosen = _strongest(norms, k)
    if expanded.pair.outputs:
        chosen = torch.cat([chosen, _strongest(norms.T, k).flip(1)])
    return sorted({(int(t), int(s)) for t, s in chosen.tolist()})


def kernel_image(kernel: np.ndarray, scale: float) -> bytes:
    """A 1-pixel-per-weight PNG, white at zero, red positive, blue negative, in LEVELS shades."""
    shade = np.round(np.clip(np.abs(kernel) / scale, 0, 1) * (LEVELS - 1)) / (LEVELS - 1)
    colour = np.where(kernel[..., None] >= 0, POSITIVE, NEGATIVE)
    pixels = 255 - shade[..., None] * (255 - colour)
    out = io.BytesIO()
    Image.fromarray(pixels.round().astype(np.uint8), "RGB").save(out, "PNG")
    return out.getvalue()


def recipe(net: Network, expanded: Expanded, weights_sha256: str) -> dict[str, object]:
    pair = expanded.pair
    params: dict[str, object] = {
        "algorithm": ALGORITHMS["circuits"],
        "source": pair.source.name, "target": pair.target.name, "top": TOP, "levels": LEVELS,
        "ranking": "L2 norm of the expanded kernel; the sign of its sum marks excitation or inhibition",
        "indirect": pair.indirect,
        "stand_ins": net.stand_ins, "weights_sha256": weights_sha256,
        "approximation": net.approximation(pair.source, pair.target, pair.indirect),
    }
    if not expanded.keeps_kernels and not pair.indirect:
        params["kernels"] = f"sum and norm only (wider than {MAX_STORED_KERNEL})"
    return digested(params)


@dataclass
class CircuitsResult:
    pairs_written: int = 0
    pairs_reused: int = 0
    edges: int = 0


def run_circuits(stage: Stage, layers: Sequence[LayerSpec]) -> CircuitsResult:
    """Write every pair whose target is in ``layers``; shard i of n takes the pairs i, i+n, i+2n, ..."""
    store, spec, net, weights_sha256 = stage.store, stage.spec, stage.net.cpu(), stage.weights_sha256
    result = CircuitsResult()
    with store.session() as session:
        model = catalogued_model(session, spec)
        done = finished_recipes(session, "circuits")
        ids = unit_ids(session, model.id)
    for pair in progress_bar(share(pairs(spec, layers), stage.shard), desc="circuits", unit="pair",
                             enabled=stage.progress):
        expanded = expand(net, pair)
        params = recipe(net, expanded, weights_sha256)
        if params["recipe_sha256"] in done:
            result.pairs_reused += 1
            continue
        rows = _edge_rows(store, expanded, ids)
        _write(store, model.id, pair, params, rows, ids)
        result.edges += len(rows)
        result.pairs_written += 1
    return result


def _edge_rows(store: Store, expanded: Expanded, unit_ids: dict) -> list[dict[str, object]]:  # noqa: ANN001
    """The kept edges' rows, their kernel images already in the blob store."""
    pair, pieces = expanded.pair, expanded.pieces
    edges = select_edges(expanded)
    starts = [piece.offset for piece in pieces]
    kernels = []
    for target, source in edges:
        piece = pieces[int(np.searchsorted(starts, target, side="right")) - 1]
        kernels.append((piece, piece.kernel.weights[target - piece.offset, source].numpy()))
    scale = float(np.quantile(np.abs(np.concatenate([k.ravel() for _, k in kernels])), 0.99)) or 1.0
    images: dict[bytes, str] = {}
    rows = []
    for (target, source), (piece, kernel) in zip(edges, kernels):
        key = None
        if expanded.keeps_kernels:
            png = kernel_image(kernel, scale)
            if png not in images:
                images[png] = store.blobs.put(png, "png")
            key = images[png]
        rows.append({
            "source_id": unit_ids[pair.source.name, source], "target_id": unit_ids[pair.target.name, target],
            "kind": "indirect" if pair.indirect else "expanded" if piece.expanded else "direct",
            "weight": round(float(kernel.sum()), 6), "norm": round(float(np.linalg.norm(kernel)), 6),
            "kernel": np.round(kernel, 6).tolist() if expanded.keeps_kernels else [], "kernel_key": key,
        })
    store.blobs.flush()  # blobs are durable before any row points at them
    return rows


def _write(store: Store, model_id: int, pair: Pair, params: dict, rows: list[dict], unit_ids: dict) -> None:  # noqa: ANN001
    """Replace the pair's edges and record its run, in one transaction."""
    targets = [unit_ids[pair.target.name, index] for index in range(pair.target.channels)]
    sources = [unit_ids[pair.source.name, index] for index in range(pair.source.channels)]
    for attempt in store.retrying():  # another writer (a worker) may hold the lock
        with attempt, store.transaction() as session:
            run = start_run(session, "circuits", model_id, params, weights_sha256=str(params["weights_sha256"]))
            replace_rows(session, Edge, Edge.target_id, targets, rows, run, Edge.source_id.in_(sources))
            finish_run(session, run)
