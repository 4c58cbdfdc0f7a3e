"""The modules stage: are the network's units clusterable, and modular (issue 22; Filan et al.'s protocol, issue 30)?

Filan et al. 2021 ("Clusterability in neural networks", dfilan/clusterability_in_neural_networks): the network as
one graph whose nodes are units and whose edges are the absolute weights between them, a convolution's filter
reduced to the L1 norm of its kernel; isolated nodes removed; scikit-learn's spectral clustering (arpack
eigensolver, k-means labels); its normalized cut (sum over clusters of the weight leaving the cluster over the
cluster's volume) against the same clustering of the network with each layer's weights shuffled, at least 100
times: the percentile (the share of shuffles that cut as low or lower) and the z-score. Here the graph's layers
are the main layers (a block's bottlenecks composed into the expanded kernel between them, through the circuits
stage's linear stand-ins); the whole network is one graph (`run_network_modules`) and each adjacent pair is its
own (`run_modules`, shown on the layer pages).

Beating the shuffles says "clusterable", not "modular": a smooth network with no modules, each layer's units on a
ring and each weight falling with the angle between them, beats its shuffles too. So every graph is also compared
with its smooth control (`smooth_control`: the same layers, sizes and weight values, arranged on rings): the verdict
is ``modular`` when the network beats every shuffle and cuts lower than its smooth control, ``clusterable`` when it
beats the shuffles only, ``not clusterable`` otherwise.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import sparse
from sqlalchemy import delete, select

from app.core.errors import MicroscopeError
from app.core.store import Layer, LayerModules, NetworkModules, Store
from app.core.zoo import LayerSpec, ModelSpec
from app.core.store.algorithms import ALGORITHMS
from precompute.stages.circuits import Pair, expand
from precompute.models.base import Network
from precompute.models.derived import base_network
from precompute.running.runs import catalogued_model, digested, finish_run, finished_recipes, start_run
from precompute.running.context import Stage

#: Strongest inside connections kept per module.
EDGES_KEPT = 8


@dataclass(frozen=True)
class ModulesConfig:
    layers: tuple[LayerSpec, ...]
    modules: int = 8
    shuffles: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        if self.modules < 2 or self.shuffles < 1:
            raise MicroscopeError("--modules must be at least 2 and --shuffles at least 1")

    def describe(self, net: Network) -> dict:
        return {"algorithm": ALGORITHMS["modules"], "modules": self.modules, "shuffles": self.shuffles, "seed": self.seed,
                "weights": f"L1 norm of the expanded kernel between main layers ({net.stand_ins})",
                "clustering": "scikit-learn SpectralClustering, precomputed affinity, arpack, k-means labels",
                "isolated": "units with no weight in or out removed", "shuffle": "each layer's weights permuted",
                "control": "the same layers, sizes and weight values arranged smoothly on rings (no modules)",
                "verdict": "modular: beats every shuffle and cuts lower than the control; clusterable: beats every "
                           "shuffle only"}


@dataclass
class ModulesResult:
    pairs_clustered: int = 0
    pairs_reused: int = 0
    figures: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0


def module_pairs(spec: ModelSpec, layers: tuple[LayerSpec, ...]) -> list[Pair]:
    """``previous -> layer`` for each chosen main layer with a spatial map whose previous one has one too."""
    spatial = ("linear", "logits")
    return [Pair(spec.layer(layer.previous), layer, outputs=True) for layer in layers
            if layer.is_main and layer.kind not in spatial and layer.previous is not None
            and spec.layer(layer.previous).kind not in spatial]


def graph(weights: np.ndarray) -> np.ndarray:
    """The symmetric adjacency of the bipartite weight graph: sources first, then targets."""
    return network_graph([weights]).toarray()


def network_graph(blocks: list[np.ndarray]) -> sparse.csr_matrix:
    """The symmetric adjacency of a chain of layers: ``blocks[i]`` (targets x sources) joins layer i to layer i + 1,
    nodes in layer order (Filan et al.'s ``weights_to_graph``)."""
    sizes = [blocks[0].shape[1]] + [block.shape[0] for block in blocks]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    rows, columns, values = [], [], []
    for number, block in enumerate(blocks):
        targets, sources = np.nonzero(block)
        rows.append(offsets[number] + sources)
        columns.append(offsets[number + 1] + targets)
        values.append(np.abs(block[targets, sources]))
    rows, columns, values = np.concatenate(rows), np.concatenate(columns), np.concatenate(values)
    upper = sparse.coo_matrix((values, (rows, columns)), shape=(offsets[-1], offsets[-1]))
    return (upper + upper.T).tocsr()


def normalized_cut(adjacency: np.ndarray | sparse.spmatrix, labels: np.ndarray) -> float:
    """Sum over clusters of (weight leaving the cluster) / (the cluster's volume)."""
    adjacency = sparse.csr_matrix(adjacency)
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    total = 0.0
    for label in np.unique(labels):
        inside = labels == label
        volume = degree[inside].sum()
        if volume > 0:
            total += adjacency[inside][:, ~inside].sum() / volume
    return float(total)


def cluster(adjacency: np.ndarray | sparse.spmatrix, modules: int, seed: int) -> np.ndarray:
    """Filan et al.'s clustering: scikit-learn's SpectralClustering on the precomputed graph, arpack eigensolver,
    k-means labels (100 k-means starts above 2,000 nodes, else 25)."""
    from sklearn.cluster import SpectralClustering

    nodes = adjacency.shape[0]
    clustering = SpectralClustering(n_clusters=min(modules, nodes - 1), affinity="precomputed", eigen_solver="arpack",
                                    assign_labels="kmeans", n_init=100 if nodes > 2000 else 25, random_state=seed)
    return clustering.fit_predict(sparse.csr_matrix(adjacency))


def connected(blocks: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The blocks without their isolated units (no weight in or out: Filan et al.'s deleted isolated components),
    and each layer's kept units."""
    sizes = [blocks[0].shape[1]] + [block.shape[0] for block in blocks]
    touched = [np.zeros(size, dtype=bool) for size in sizes]
    for number, block in enumerate(blocks):
        touched[number] |= (block != 0).any(axis=0)
        touched[number + 1] |= (block != 0).any(axis=1)
    kept = [np.flatnonzero(mask) for mask in touched]
    return [block[np.ix_(kept[n + 1], kept[n])] for n, block in enumerate(blocks)], kept


def shuffled_blocks(blocks: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """Each layer's weights permuted within it (Filan et al.'s ``layer`` shuffle)."""
    return [rng.permutation(block.reshape(-1)).reshape(block.shape) for block in blocks]


def smooth_control(blocks: list[np.ndarray]) -> list[np.ndarray]:
    """A network that is smooth but has no modules, with ``blocks``' layers, sizes and weight values: each layer's
    units evenly on a ring, and each block's values reassigned by rank so the largest join units at the smallest
    angle to each other (the values' order follows cos of the angle between the two units)."""
    out = []
    for block in blocks:
        targets, sources = block.shape
        angle = (2 * np.pi * np.arange(targets) / targets)[:, None] - (2 * np.pi * np.arange(sources) / sources)[None, :]
        order = np.argsort(np.cos(angle).reshape(-1), kind="stable")
        arranged = np.empty(block.size)
        arranged[order] = np.sort(np.abs(block).reshape(-1), kind="stable")
        out.append(arranged.reshape(block.shape))
    return out


@dataclass(frozen=True)
class Clusterability:
    labels: np.ndarray
    #: Each layer's units kept (not isolated), in the order of ``labels``.
    kept: list[np.ndarray]
    ncut: float
    shuffled: list[float]
    #: The share of shuffles that cut as low or lower (0: it beats every one), and (ncut - their mean) / their std.
    percentile: float
    z: float
    control_ncut: float
    verdict: str


def filan(blocks: list[np.ndarray], modules: int, shuffles: int, seed: int) -> Clusterability:
    """Filan et al.'s clusterability of the chain of ``blocks``, against ``shuffles`` layer shuffles and the smooth
    control (which shares the shuffles' distribution: shuffling the control permutes the same values)."""
    blocks, kept = connected([np.abs(np.asarray(block, dtype=np.float64)) for block in blocks])
    adjacency = network_graph(blocks)
    labels = cluster(adjacency, modules, seed)
    ncut = normalized_cut(adjacency, labels)
    rng = np.random.default_rng(seed)
    shuffled = []
    for number in range(shuffles):
        other = network_graph(shuffled_blocks(blocks, rng))
        shuffled.append(normalized_cut(other, cluster(other, modules, seed + number + 1)))
    control = network_graph(smooth_control(blocks))
    control_ncut = normalized_cut(control, cluster(control, modules, seed))
    percentile = float(np.mean([value <= ncut for value in shuffled]))
    spread = float(np.std(shuffled))
    z = (ncut - float(np.mean(shuffled))) / spread if spread > 0 else 0.0
    verdict = ("modular" if percentile == 0 and ncut < control_ncut else "clusterable" if percentile == 0
               else "not clusterable")
    return Clusterability(labels, kept, ncut, shuffled, percentile, round(z, 3), control_ncut, verdict)


def clusterability(weights: np.ndarray, modules: int, shuffles: int, seed: int) -> tuple[np.ndarray, float, list[float]]:
    """One pair's clustering labels (every unit, isolated ones -1), normalized cut and shuffled cuts."""
    found = filan([weights], modules, shuffles, seed)
    labels = np.full(weights.shape[1] + weights.shape[0], -1)
    labels[np.concatenate([found.kept[0], weights.shape[1] + found.kept[1]])] = found.labels
    return labels, found.ncut, found.shuffled


def _summary(weights: np.ndarray, labels: np.ndarray, pair: Pair, modules: int) -> tuple[list[dict], list[list[float]]]:
    targets, sources = weights.shape
    source_labels, target_labels = labels[:sources], labels[sources:]
    found = []
    between = np.zeros((modules, modules))
    for a in range(modules):
        for b in range(modules):
            between[a, b] = weights[np.ix_(target_labels == b, source_labels == a)].sum()
    between = between + between.T - np.diag(np.diag(between))  # symmetric: weight between modules either way
    for module in range(modules):
        src, tgt = np.flatnonzero(source_labels == module), np.flatnonzero(target_labels == module)
        inside = weights[np.ix_(tgt, src)]
        touching = weights[:, src].sum() + weights[tgt, :].sum() - inside.sum()
        order = np.argsort(inside, axis=None)[::-1][:EDGES_KEPT]
        edges = [[int(src[i % len(src)]), int(tgt[i // len(src)]), round(float(inside.reshape(-1)[i]), 4)]
                 for i in order if inside.size]
        found.append({"units": {pair.source.name: src.tolist(), pair.target.name: tgt.tolist()},
                      "inside": round(float(inside.sum() / touching), 4) if touching > 0 else 0.0, "edges": edges})
    return found, np.round(between, 3).tolist()


def pair_weights(net: Network, pair: Pair) -> np.ndarray:
    """(targets, sources): the L1 norm of each connection's expanded kernel."""
    return torch.cat([piece.kernel.l1_norms() for piece in expand(net, pair).pieces]).double().numpy()


def run_modules(stage: Stage, config: ModulesConfig) -> ModulesResult:
    """Cluster each chosen layer pair (skipping one stored with this recipe) and store its modules."""
    net = base_network(stage.net)
    spec = net.spec
    result = ModulesResult()
    started = time.perf_counter()
    with stage.store.session() as session:
        model_id = catalogued_model(session, spec).id
        done = finished_recipes(session, "modules")
    for pair in module_pairs(spec, config.layers):
        recipe = digested({**config.describe(net), "model": spec.name, "weights_sha256": stage.weights_sha256,
                           "source": pair.source.name, "target": pair.target.name})
        if recipe["recipe_sha256"] in done:
            result.pairs_reused += 1
            continue
        weights = pair_weights(net, pair)
        found = filan([weights], config.modules, config.shuffles, config.seed)
        labels = np.full(weights.shape[1] + weights.shape[0], -1)
        labels[np.concatenate([found.kept[0], weights.shape[1] + found.kept[1]])] = found.labels
        modules, between = _summary(weights, labels, pair, config.modules)
        _write(stage.store, model_id, pair, recipe, {
            "count": config.modules, "ncut": round(found.ncut, 4), "shuffled": [round(v, 4) for v in found.shuffled],
            "better": found.percentile, "modules": modules, "between": between, "z": found.z,
            "control_ncut": round(found.control_ncut, 4), "verdict": found.verdict})
        result.pairs_clustered += 1
        result.figures[f"{pair.source.name}->{pair.target.name}"] = _figures(found)
    result.seconds = time.perf_counter() - started
    return result


def _figures(found: Clusterability) -> dict:
    return {"ncut": round(found.ncut, 3), "shuffled_mean": round(float(np.mean(found.shuffled)), 3),
            "shuffled_std": round(float(np.std(found.shuffled)), 3), "better": found.percentile, "z": found.z,
            "shuffles": len(found.shuffled), "control_ncut": round(found.control_ncut, 3), "verdict": found.verdict}


def run_network_modules(stage: Stage, config: ModulesConfig) -> dict | None:
    """The whole network (its main layers with maps, in order) as one graph, clustered by Filan et al.'s protocol
    with its smooth control; stored per model (`app.core.store.NetworkModules`). None when it is stored with this recipe."""
    net = base_network(stage.net)
    spec = net.spec
    pairs = module_pairs(spec, tuple(spec.main_layers))
    if not pairs:
        raise MicroscopeError(f"{spec.name} has no two adjacent main layers with maps to cluster")
    recipe = digested({**config.describe(net), "model": spec.name, "weights_sha256": stage.weights_sha256,
                       "layers": [pairs[0].source.name] + [pair.target.name for pair in pairs]})
    with stage.store.session() as session:
        model_id = catalogued_model(session, spec).id
        if recipe["recipe_sha256"] in finished_recipes(session, "network-modules"):
            return None
    found = filan([pair_weights(net, pair) for pair in pairs], config.modules, config.shuffles, config.seed)
    names = recipe["layers"]
    sizes = [len(kept) for kept in found.kept]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    modules = [{"units": {name: found.kept[n][found.labels[offsets[n]:offsets[n + 1]] == module].tolist()
                          for n, name in enumerate(names)}} for module in range(int(found.labels.max()) + 1)]
    figures = _figures(found)
    for attempt in stage.store.retrying():
        with attempt, stage.store.transaction() as session:
            run = start_run(session, "network-modules", model_id, recipe, weights_sha256=stage.weights_sha256,
                            seed=config.seed)
            session.execute(delete(NetworkModules).where(NetworkModules.model_id == model_id))
            session.add(NetworkModules(model_id=model_id, count=config.modules, ncut=round(found.ncut, 4),
                                       shuffled=[round(v, 4) for v in found.shuffled], percentile=found.percentile,
                                       z=found.z, control_ncut=round(found.control_ncut, 4), verdict=found.verdict,
                                       isolated=int(sum(layer.channels for layer in [spec.layer(n) for n in names])
                                                    - sum(sizes)),
                                       modules=modules, recipe_sha256=recipe["recipe_sha256"], recipe=recipe,
                                       run_id=run.id))
            finish_run(session, run)
    return figures


def _write(store: Store, model_id: int, pair: Pair, recipe: dict, row: dict) -> None:
    for attempt in store.retrying():
        with attempt, store.transaction() as session:
            ids = dict(session.execute(select(Layer.name, Layer.id).where(
                Layer.model_id == model_id, Layer.name.in_([pair.source.name, pair.target.name]))).all())
            run = start_run(session, "modules", model_id, recipe, weights_sha256=str(recipe["weights_sha256"]),
                            seed=int(recipe["seed"]))
            session.execute(delete(LayerModules).where(LayerModules.source_id == ids[pair.source.name],
                                                       LayerModules.target_id == ids[pair.target.name]))
            session.add(LayerModules(source_id=ids[pair.source.name], target_id=ids[pair.target.name],
                                     recipe_sha256=recipe["recipe_sha256"], recipe=recipe, run_id=run.id, **row))
            finish_run(session, run)
