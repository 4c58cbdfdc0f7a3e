"""The modules stage: do a layer's units cluster with the previous layer's into modules (issue 22)?

For each pair of adjacent main layers with spatial maps (``previous -> layer``), the weight graph joins
every unit of the one to every unit of the other with the L2 norm of the expanded kernel between them
(the circuits stage's ranking, through the same linear stand-ins). scikit-learn's spectral clustering cuts
the graph into ``--modules`` clusters, and its normalized cut (sum over clusters of the weight leaving the
cluster over the cluster's volume) is compared with the same clustering of the weights shuffled within the
pair, a number of times: Filan et al. 2021 ("Clusterability in neural networks"), where a network is
clusterable when its cut is lower than the shuffles'. Stored per pair (`app.store.LayerModules`): the
modules with their units, the share of their weight that stays inside and their strongest inside
connections, the weight between modules, the cut, the shuffles' cuts and the fraction of shuffles that
cluster better.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from sqlalchemy import delete, select

from app.errors import MicroscopeError
from app.store import Layer, LayerModules, Store
from app.zoo import LayerSpec, ModelSpec
from precompute.circuits import Pair, expand
from precompute.models.derived import base_network
from precompute.runs import catalogued_model, digested, finish_run, finished_recipes, start_run
from precompute.stage import Stage

MODULES_ALGORITHM = 1
#: Strongest inside connections kept per module.
EDGES_KEPT = 8


@dataclass(frozen=True)
class ModulesConfig:
    layers: tuple[LayerSpec, ...]
    modules: int = 8
    shuffles: int = 20
    seed: int = 0

    def __post_init__(self) -> None:
        if self.modules < 2 or self.shuffles < 1:
            raise MicroscopeError("--modules must be at least 2 and --shuffles at least 1")


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
    targets, sources = weights.shape
    adjacency = np.zeros((sources + targets, sources + targets))
    adjacency[:sources, sources:] = weights.T
    adjacency[sources:, :sources] = weights
    return adjacency


def normalized_cut(adjacency: np.ndarray, labels: np.ndarray) -> float:
    """Sum over clusters of (weight leaving the cluster) / (the cluster's volume)."""
    degree = adjacency.sum(axis=1)
    total = 0.0
    for label in np.unique(labels):
        inside = labels == label
        volume = degree[inside].sum()
        if volume > 0:
            total += adjacency[inside][:, ~inside].sum() / volume
    return float(total)


def cluster(adjacency: np.ndarray, modules: int, seed: int) -> np.ndarray:
    from sklearn.cluster import SpectralClustering

    clustering = SpectralClustering(n_clusters=modules, affinity="precomputed", assign_labels="cluster_qr",
                                    random_state=seed)
    return clustering.fit_predict(adjacency + 1e-12)  # a unit with no weight at all still gets a cluster


def clusterability(weights: np.ndarray, modules: int, shuffles: int, seed: int) -> tuple[np.ndarray, float, list[float]]:
    """The clustering's labels and normalized cut, and the cuts of ``shuffles`` shuffles of the weights."""
    adjacency = graph(weights)
    labels = cluster(adjacency, modules, seed)
    ncut = normalized_cut(adjacency, labels)
    rng = np.random.default_rng(seed)
    shuffled = []
    for number in range(shuffles):
        permuted = rng.permutation(weights.reshape(-1)).reshape(weights.shape)
        other = graph(permuted)
        shuffled.append(normalized_cut(other, cluster(other, modules, seed + number + 1)))
    return labels, ncut, shuffled


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
        recipe = digested({"algorithm": MODULES_ALGORITHM, "model": spec.name, "weights_sha256": stage.weights_sha256,
                           "source": pair.source.name, "target": pair.target.name, "modules": config.modules,
                           "shuffles": config.shuffles, "seed": config.seed,
                           "weights": f"L2 norm of the expanded kernel ({net.stand_ins})",
                           "clustering": "scikit-learn SpectralClustering, precomputed affinity, cluster_qr",
                           "shuffle": "the pair's weight matrix, entries permuted"})
        if recipe["recipe_sha256"] in done:
            result.pairs_reused += 1
            continue
        weights = torch.cat([piece.kernel.norms() for piece in expand(net, pair).pieces]).double().numpy()
        labels, ncut, shuffled = clusterability(weights, config.modules, config.shuffles, config.seed)
        modules, between = _summary(weights, labels, pair, config.modules)
        better = sum(value <= ncut for value in shuffled) / len(shuffled)
        _write(stage.store, model_id, pair, recipe, {
            "count": config.modules, "ncut": round(ncut, 4), "shuffled": [round(v, 4) for v in shuffled],
            "better": better, "modules": modules, "between": between})
        result.pairs_clustered += 1
        result.figures[f"{pair.source.name}->{pair.target.name}"] = {
            "ncut": round(ncut, 3), "shuffled_mean": round(float(np.mean(shuffled)), 3),
            "shuffled_std": round(float(np.std(shuffled)), 3), "better": better}
    result.seconds = time.perf_counter() - started
    return result


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
