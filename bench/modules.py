"""Modularity (issue 22): each pair of adjacent main layers clustered by its weights, against the weights shuffled.

    python bench/modules.py --data microscope-data [--model inceptionv1_caffe] [--modules 8] [--shuffles 20]

Runs the modules stage (`microscope precompute modules`) on a scratch copy of the store and prints, per layer
pair, the normalized cut of the spectral clustering of the weight graph (L2 norms of the expanded kernels), the
mean and spread of the same clustering's cut over shuffles of the pair's weights, and the fraction of shuffles
that cluster better (Filan et al.'s test: 0 means the trained weights are more modular than every shuffle).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scratch import scratch_copy  # noqa: E402


def main() -> None:
    import torch

    from app.settings import Settings
    from app.store import Store
    from precompute.models import load
    from precompute.modules import ModulesConfig, run_modules
    from precompute.stage import Stage

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "microscope-data")
    parser.add_argument("--model", default="inceptionv1_caffe")
    parser.add_argument("--modules", type=int, default=8)
    parser.add_argument("--shuffles", type=int, default=20)
    arguments = parser.parse_args()
    loaded = load(arguments.model, None)
    with scratch_copy(arguments.data) as copy, Store.open(Settings.load(copy)) as store:
        stage = Stage(store, loaded.net, loaded.weights_sha256, torch.device("cpu"), progress=False)
        result = run_modules(stage, ModulesConfig(layers=loaded.net.spec.main_layers, modules=arguments.modules,
                                                  shuffles=arguments.shuffles))
    print(f"modules of {arguments.model}: {arguments.modules} clusters per pair, {arguments.shuffles} shuffles, "
          f"{result.seconds:.0f} s")
    print("| layer pair | normalized cut | shuffled: mean ± std | shuffles that cluster better |")
    print("|---|---|---|---|")
    for pair, figures in result.figures.items():
        print(f"| {pair} | {figures['ncut']:.3f} | {figures['shuffled_mean']:.3f} ± {figures['shuffled_std']:.3f} | "
              f"{100 * figures['better']:.0f}% |")


if __name__ == "__main__":
    main()
