"""``microscope precompute sanity``: the cascading model-randomization test of each attribution method (issue 23).

For ``images`` photos of the dataset (the first of the examples' images, in their stable order, framed as probes
frame theirs), each method's map for the real network's top class is compared with its map on copies of the
network whose weights are re-initialized from the top down (`precompute.methods.attribution.cascading_randomization`):
per step, each image's figures (`precompute.methods.attribution.compare`) and their medians with bootstrap intervals; the
verdict's criterion is `app.core.verdicts`. One row per model, method, target kind and step (`app.core.store.SanityStep`); a
recipe already stored is not run again.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import delete

from app.core import verdicts
from app.core.errors import MicroscopeError
from app.core.store import SanityStep
from app.core.zoo.skips import require
from app.core.store.algorithms import ALGORITHMS
from precompute.methods.attribution import (ALL_METHODS, FIGURES, IG_STEPS, TARGET_KINDS, cascading_randomization,
                                    weight_groups)
from precompute.stages.examples import input_transform
from precompute.running.images import list_images, load_rgb
from precompute.models.derived import base_network
from precompute.running.runs import catalogued_model, digested, finish_run, finished_recipes, start_run
from precompute.running.context import Stage

#: Bootstrap resamples of the images for each median's 95% interval (scipy.stats.bootstrap, percentile method).
RESAMPLES = 1000


@dataclass(frozen=True)
class SanityConfig:
    images: int = 50
    methods: tuple[str, ...] = ALL_METHODS
    targets: tuple[str, ...] = ("class",)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in ALL_METHODS]
        if unknown:
            raise MicroscopeError(f"unknown attribution method {unknown[0]!r}: choose from {', '.join(ALL_METHODS)}")
        wrong = [t for t in self.targets if t not in TARGET_KINDS]
        if wrong or not self.targets:
            raise MicroscopeError(f"unknown target kind {(wrong or [''])[0]!r}: choose from {', '.join(TARGET_KINDS)}")
        if self.images < 2:
            raise MicroscopeError("--images must be at least 2 (a median over images)")


@dataclass
class SanityResult:
    methods_tested: int = 0
    methods_reused: int = 0
    #: Per (method, target kind), each step's randomized group, median Spearman (None: mostly degenerate) and
    #: degenerate count.
    figures: dict[tuple[str, str], list[tuple[str, float | None, int]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def summarize(pairs: Sequence[dict[str, float] | None], seed: int = 0) -> tuple[dict[str, dict[str, float]] | None, int]:
    """Each figure's median over the images scored, with its 95% bootstrap interval over images, and how many pairs
    were degenerate; no figures when most were (`app.core.verdicts.MOSTLY_DEGENERATE`)."""
    from scipy.stats import bootstrap

    scored = [pair for pair in pairs if pair is not None]
    degenerate = len(pairs) - len(scored)
    if not scored or degenerate > verdicts.MOSTLY_DEGENERATE * len(pairs):
        return None, degenerate
    figures = {}
    for name in FIGURES:
        values = np.array([pair[name] for pair in scored])
        median = float(np.median(values))
        if len(values) < 2 or values.min() == values.max():
            low = high = median
        else:
            interval = bootstrap((values,), np.median, n_resamples=RESAMPLES, confidence_level=0.95,
                                 method="percentile", rng=np.random.default_rng(seed)).confidence_interval
            low, high = float(interval.low), float(interval.high)
        figures[name] = {"median": round(median, 4), "low": round(low, 4), "high": round(high, 4)}
    return figures, degenerate


def run_sanity(stage: Stage, root: Path, config: SanityConfig, poll: Callable[[], None] | None = None) -> SanityResult:
    net = base_network(stage.net).eval()
    spec = net.spec
    require(spec, "sanity")
    result = SanityResult()
    started = time.perf_counter()
    with stage.store.session() as session:
        model_id = catalogued_model(session, spec).id
        done = finished_recipes(session, "sanity")
    groups = [name for name, _ in weight_groups(net)]
    recipes = {(method, kind): digested({
        "algorithm": ALGORITHMS["sanity"], "model": spec.name, "weights_sha256": stage.weights_sha256, "method": method,
        "target": kind, "images": config.images, "dataset": str(root), "seed": config.seed, "groups": groups,
        "targets": {"class": "the real network's top class on each image (its logit)",
                    "unit": "the deepest layer with a map's most active unit at its strongest position (pre-ReLU)"}[kind],
        "integrated_gradients_steps": IG_STEPS,
        "randomization": "cascading, top group first; each module's reset_parameters, torch seed + group number",
        "figures": "Spearman of the shown and of the signed maps, SSIM of the shown maps scaled to [0, 1], Pearson of "
                   "their HOG (scikit-image: 9 orientations, 16x16 cells, 2x2 blocks); degenerate maps (constant or "
                   "non-finite) counted, not scored; medians with 95% percentile-bootstrap intervals over images "
                   f"({RESAMPLES} resamples)",
        "criterion": {"figure": verdicts.FIGURE, "decorrelated_below": verdicts.DECORRELATED,
                      "control": verdicts.CONTROL, "judged_step": verdicts.judged_step(len(groups))},
    }) for method in config.methods for kind in config.targets}
    todo = {kind: [m for m in config.methods if recipes[m, kind]["recipe_sha256"] not in done] for kind in config.targets}
    result.methods_reused = sum(len(config.methods) - len(methods) for methods in todo.values())
    if not any(todo.values()):
        return result
    files = list_images(root)[:config.images]
    if len(files) < 2:
        raise MicroscopeError(f"{root} has {len(files)} images: the test needs at least 2")
    frame = input_transform(spec)
    images = []
    for file in files:
        try:
            images.append((frame(load_rgb(file)) * 255).round() / 255)
        except (OSError, ValueError) as error:  # one odd image does not stop the test
            result.skipped.append(f"{file.path}: {error}")
    for kind, methods in todo.items():
        if not methods:
            continue
        cascade, layers = cascading_randomization(net.to(stage.device), [image.to(stage.device) for image in images],
                                                  methods, kind, seed=config.seed, poll=poll)
        for method in methods:
            summaries = [(row, *summarize(row["pairs"], config.seed)) for row in cascade[method]]
            recipe = recipes[method, kind]
            for attempt in stage.store.retrying():
                with attempt, stage.store.transaction() as session:
                    run = start_run(session, "sanity", model_id, recipe, weights_sha256=stage.weights_sha256,
                                    seed=config.seed)
                    session.execute(delete(SanityStep).where(SanityStep.model_id == model_id, SanityStep.method == method,
                                                             SanityStep.target == kind))
                    session.add_all([
                        SanityStep(model_id=model_id, method=method, target=kind, at=layers[method], depth=row["depth"],
                                   randomized=row["randomized"], images=len(images), degenerate=degenerate,
                                   figures=figures, pairs=[None if p is None else {k: round(v, 4) for k, v in p.items()}
                                                           for p in row["pairs"]],
                                   recipe_sha256=recipe["recipe_sha256"], recipe={**recipe, "images": len(images)},
                                   run_id=run.id)
                        for row, figures, degenerate in summaries
                    ])
                    finish_run(session, run)
            result.methods_tested += 1
            result.figures[method, kind] = [(row["randomized"], figures[verdicts.FIGURE]["median"] if figures else None,
                                             degenerate) for row, figures, degenerate in summaries]
    result.seconds = time.perf_counter() - started
    return result
