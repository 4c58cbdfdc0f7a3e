"""Modularity (issues 22, 30): the whole network and each pair of adjacent main layers clustered by their weights
(Filan et al.'s protocol), against the weights shuffled and against a smooth control with no modules.

    python bench/modules.py --data microscope-data [--model inceptionv1_caffe] [--modules 8] [--shuffles 100]

Runs the modules stage (`microscope precompute modules`) on a scratch copy of the store and prints, for the whole
network and per layer pair, the normalized cut of the spectral clustering of the weight graph (L1 norms of the
expanded kernels, isolated units removed), the mean and spread of the same clustering's cut over networks with each
layer's weights shuffled, the share of shuffles that cut as low (0: it beats every one) and the z-score, the smooth
control's cut (the same weights arranged on rings) and the verdict: modular, clusterable or not clusterable.
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

    from app.core.settings import Settings
    from app.core.store import Store
    from precompute.models import load
    import time

    from precompute.stages.modules import ModulesConfig, run_modules, run_network_modules
    from precompute.running.context import Stage

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "microscope-data")
    parser.add_argument("--model", default="inceptionv1_caffe")
    parser.add_argument("--modules", type=int, default=8)
    parser.add_argument("--shuffles", type=int, default=100)
    arguments = parser.parse_args()
    loaded = load(arguments.model, None)
    with scratch_copy(arguments.data) as copy, Store.open(Settings.load(copy)) as store:
        stage = Stage(store, loaded.net, loaded.weights_sha256, torch.device("cpu"), progress=False)
        config = ModulesConfig(layers=loaded.net.spec.main_layers, modules=arguments.modules,
                               shuffles=arguments.shuffles)
        started = time.perf_counter()
        whole = run_network_modules(stage, config)
        network_seconds = time.perf_counter() - started
        result = run_modules(stage, config)
    print(f"modules of {arguments.model}: {arguments.modules} clusters, {arguments.shuffles} shuffles; the whole network "
          f"{network_seconds:.0f} s, the pairs {result.seconds:.0f} s")
    print("| graph | normalized cut | shuffled: mean ± std | shuffles that cut as low | z | smooth control | verdict |")
    print("|---|---|---|---|---|---|---|")
    for pair, figures in [("whole network", whole), *result.figures.items()]:
        print(f"| {pair} | {figures['ncut']:.3f} | {figures['shuffled_mean']:.3f} ± {figures['shuffled_std']:.3f} | "
              f"{100 * figures['better']:.0f}% | {figures['z']:.1f} | {figures['control_ncut']:.3f} | "
              f"{figures['verdict']} |")


if __name__ == "__main__":
    main()
