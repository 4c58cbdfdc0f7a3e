"""``microscope precompute sanity``: the cascading model-randomization test of each attribution method (issue 23).

For ``images`` photos of the dataset (the first of the examples' images, in their stable order, framed as probes
frame theirs), each method's map for the real network's top class is compared with its map on copies of the
network whose weights are re-initialized from the top down (`precompute.attribution.cascading_randomization`):
per step, each image's Spearman rank correlation and SSIM. One row per model, method and step
(`app.store.AttributionCheck`); a recipe already stored is not run again.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import delete

from app.attribution import PASSES_BELOW
from app.errors import MicroscopeError
from app.store import AttributionCheck
from precompute.attribution import ATTRIBUTION_ALGORITHM, IG_STEPS, METHODS, cascading_randomization, weight_groups
from precompute.examples import input_transform
from precompute.images import list_images, load_rgb
from precompute.models.derived import base_network
from precompute.runs import catalogued_model, digested, finish_run, finished_recipes, start_run
from precompute.stage import Stage


@dataclass(frozen=True)
class SanityConfig:
    images: int = 50
    methods: tuple[str, ...] = METHODS
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise MicroscopeError(f"unknown attribution method {unknown[0]!r}: choose from {', '.join(METHODS)}")
        if self.images < 2:
            raise MicroscopeError("--images must be at least 2 (a median over images)")


@dataclass
class SanityResult:
    methods_tested: int = 0
    methods_reused: int = 0
    #: Per method, the median Spearman correlation at each step, top group first.
    figures: dict[str, list[tuple[str, float, float]]] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_sanity(stage: Stage, root: Path, config: SanityConfig, poll: Callable[[], None] | None = None) -> SanityResult:
    net = base_network(stage.net).eval()
    spec = net.spec
    result = SanityResult()
    started = time.perf_counter()
    with stage.store.session() as session:
        model_id = catalogued_model(session, spec).id
        done = finished_recipes(session, "sanity")
    groups = [name for name, _ in weight_groups(net)]
    recipes = {method: digested({
        "algorithm": ATTRIBUTION_ALGORITHM, "model": spec.name, "weights_sha256": stage.weights_sha256, "method": method,
        "images": config.images, "dataset": str(root), "seed": config.seed, "groups": groups,
        "target": "the real network's top class on each image", "integrated_gradients_steps": IG_STEPS,
        "randomization": "cascading, top group first; each module's reset_parameters, torch seed + group number",
        "similarity": "Spearman rank correlation of the maps; SSIM (scikit-image) of the maps scaled to [0, 1]",
        "passes_below": PASSES_BELOW,
    }) for method in config.methods}
    todo = [method for method in config.methods if recipes[method]["recipe_sha256"] not in done]
    result.methods_reused = len(config.methods) - len(todo)
    if not todo:
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
    cascade = cascading_randomization(net.to(stage.device), [image.to(stage.device) for image in images], todo, seed=config.seed,
                                      poll=poll)
    for method in todo:
        rows = cascade[method]
        for attempt in stage.store.retrying():
            with attempt, stage.store.transaction() as session:
                run = start_run(session, "sanity", model_id, recipes[method], weights_sha256=stage.weights_sha256,
                                seed=config.seed)
                session.execute(delete(AttributionCheck).where(AttributionCheck.model_id == model_id,
                                                               AttributionCheck.method == method))
                session.add_all([
                    AttributionCheck(model_id=model_id, method=method, depth=row["depth"], randomized=row["randomized"],
                                     spearman_median=round(statistics.median(row["spearman"]), 4),
                                     ssim_median=round(statistics.median(row["ssim"]), 4), spearman=row["spearman"],
                                     ssim=row["ssim"], recipe_sha256=recipes[method]["recipe_sha256"],
                                     recipe={**recipes[method], "images": len(images)}, run_id=run.id)
                    for row in rows
                ])
                finish_run(session, run)
        result.methods_tested += 1
        result.figures[method] = [(row["randomized"], round(statistics.median(row["spearman"]), 3),
                                   round(statistics.median(row["ssim"]), 3)) for row in rows]
    result.seconds = time.perf_counter() - started
    return result
