"""Directions as units (issue 22): NMF groups and top-k dictionaries of a model's layers, their figures and time.

    python bench/factors.py --data microscope-data [--model inceptionv1_caffe] [--layers mixed3b,mixed4c]
                            [--methods sae,nmf] [--expansion 8] [--k 32] [--steps 3000] [--groups 32] [--device cpu]

Copies the store's database (its blobs are shared: the new crops and arrays land in the same folder, content-
addressed) into a scratch folder and runs `precompute factors` there on the images the store's examples were
made from, one layer at a time, timed: sampling, fitting or training, and the two accuracy passes, then the
direction's examples and labels. Prints per layer: the fraction of variance unexplained (held-out images), the
mean active features per position, the fraction of dead features, top-1/top-5 with the layer's output replaced
by its reconstruction against the original's; the polysemanticity of the base layer's units in the dictionary
(how many features put a weight of at least 0.2 on a unit, and the participation ratio of their shares of its
activity); and, for mixed3b, the curve family of the dictionary beside the neurons' (tuning stage, curves and
lines): how many units of each have a curve selectivity above 0.3 and 0.5, and the preferred orientations of
each's 30 most curve-selective units. The store at --data needs its examples (`microscope precompute all`).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scratch import scratch_copy  # noqa: E402


def main() -> None:
    import torch
    from sqlalchemy import select

    from app.core.settings import Settings
    from app.core.store import Factorization, Layer, Store, Unit, UnitMixture, UnitTuning
    from precompute.running.devices import pick_device
    from precompute.stages.factors import FactorsConfig, run_factors
    from precompute.models import load
    from precompute.models.derived import with_factors
    from precompute.running.runs import stored_dataset_root
    from precompute.running.context import Stage
    from precompute.stages.tuning import TuningConfig, run_tuning

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "microscope-data")
    parser.add_argument("--model", default="inceptionv1_caffe")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", default="mixed3b,mixed4c")
    parser.add_argument("--methods", default="sae,nmf")
    parser.add_argument("--expansion", type=int, default=8)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--groups", type=int, default=32)
    arguments = parser.parse_args()
    loaded = load(arguments.model, None)
    device = pick_device(arguments.device)
    net = loaded.net.to(device)
    rows = []
    with scratch_copy(arguments.data) as copy:
        with Store.open(Settings.load(copy)) as store:
            root = stored_dataset_root(store)
            if root is None:
                raise SystemExit(f"{arguments.data} has no examples' dataset to sample: run `microscope precompute all`")
            stage = Stage(store, net, loaded.weights_sha256, device)
            for method in arguments.methods.split(","):
                for name in arguments.layers.split(","):
                    config = FactorsConfig(layers=(net.spec.layer(name),), method=method, groups=arguments.groups,
                                           expansion=arguments.expansion, k=arguments.k, steps=arguments.steps)
                    started = time.perf_counter()
                    result = run_factors(stage, root, config)
                    total = time.perf_counter() - started
                    derived = f"{name}_{method}"
                    rows.append((derived, result.figures.get(derived, {}), result.seconds.get(derived, 0.0), total))
                    print(f"{derived}: {result.figures.get(derived)} (fit {result.seconds.get(derived, 0):.0f} s, "
                          f"with examples and labels {total:.0f} s)", flush=True)
            with store.session() as session:
                mixtures = session.execute(
                    select(Layer.name, UnitMixture.features, UnitMixture.effective)
                    .join(Factorization, UnitMixture.factorization_id == Factorization.id)
                    .join(Layer, Factorization.layer_id == Layer.id)).all()
            curves = {}
            if "mixed3b" in arguments.layers.split(",") and "sae" in arguments.methods.split(","):
                factored = Stage(store, with_factors(store, net, device), loaded.weights_sha256, device)
                started = time.perf_counter()
                run_tuning(factored, TuningConfig(layers=(factored.spec.layer("mixed3b"), factored.spec.layer("mixed3b_sae")),
                                                  families=("lines", "curves")))
                tuned = time.perf_counter() - started
                with store.session() as session:
                    for layer in ("mixed3b", "mixed3b_sae"):
                        curves[layer] = session.execute(
                            select(UnitTuning.selectivity, UnitTuning.preferred)
                            .join(Unit, UnitTuning.unit_id == Unit.id).join(Layer, Unit.layer_id == Layer.id)
                            .where(Layer.name == layer, UnitTuning.family == "curves")
                            .order_by(UnitTuning.selectivity.desc())).all()
    print(f"\nfactors on {device} ({torch.get_num_threads()} threads), {arguments.model}; dictionaries "
          f"{arguments.expansion}x with k = {arguments.k}, {arguments.steps} steps; NMF {arguments.groups} groups")
    print("| layer | unexplained variance | active / position | dead | top-1 spliced (original) | top-5 spliced (original) "
          "| fit s | with examples s |")
    print("|---|---|---|---|---|---|---|---|")
    for derived, figures, fit, total in rows:
        dead = figures.get("dead_fraction")
        top1 = (f"{100 * figures['spliced_top1']:.1f} ({100 * figures['original_top1']:.1f})"
                if "spliced_top1" in figures else "-")
        top5 = (f"{100 * figures['spliced_top5']:.1f} ({100 * figures['original_top5']:.1f})"
                if "spliced_top5" in figures else "-")
        print(f"| {derived} | {figures.get('unexplained_variance')} | {figures.get('active_per_position')} | "
              f"{'-' if dead is None else f'{100 * dead:.1f}%'} | {top1} | {top5} | {fit:.0f} | {total:.0f} |")
    print("\npolysemanticity of the base units (features with a weight >= 0.2; participation ratio of their shares):")
    print("| derived layer | units | mean features | units with >= 2 | median participation | max participation |")
    print("|---|---|---|---|---|---|")
    by_layer: dict[str, list[tuple[int, float]]] = {}
    for layer, features, effective in mixtures:
        by_layer.setdefault(layer, []).append((features, effective))
    for layer, values in sorted(by_layer.items()):
        counts, effective = [v[0] for v in values], [v[1] for v in values]
        print(f"| {layer} | {len(values)} | {statistics.mean(counts):.2f} | {sum(c >= 2 for c in counts)} | "
              f"{statistics.median(effective):.2f} | {max(effective):.1f} |")
    if curves:
        print(f"\nmixed3b's curve family, neurons beside dictionary features (tuning {tuned:.0f} s):")
        print("| layer | units | selectivity >= 0.3 | >= 0.5 | top 30 by preferred orientation (45-degree sectors) |")
        print("|---|---|---|---|---|")
        for layer, found in curves.items():
            sectors = Counter(int(preferred["orientation"] // 45) * 45 for _, preferred in found[:30])
            spread = ", ".join(f"{start}: {sectors.get(start, 0)}" for start in range(0, 360, 45))
            print(f"| {layer} | {len(found)} | {sum(s >= 0.3 for s, _ in found)} | {sum(s >= 0.5 for s, _ in found)} | "
                  f"{spread} |")


if __name__ == "__main__":
    main()
