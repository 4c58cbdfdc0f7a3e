"""Your own model (issue 31): `precompute all` on researchers' networks, and a 32 px network's render sized to it.

    python bench/own_models.py [--images DIR] [--steps 128] [--early-steps 256]   # every fixture's precompute all
    python bench/own_models.py --render mnist|cifar [--steps 512]                  # one unit: sized, and at 224 px

Without --render: for each fixture of tests/support/own_models.py (seeded weights, a names file), runs `microscope
precompute all` in a fresh store on the images (default: the first 100 of the shared ImageNet sample, copied into a
temporary folder; the multispectral one: as many seeded 4-channel arrays) with the main job's default renders, and prints its wall time and the store's size (database and
blobs). With --render: one unit of a 32 px fixture rendered sized to the network and at 224 px with Lucid's
transforms (how it rendered before issue 31), in turn, 3 times each: the medians and their ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: (factory, names file fields, what it stands for)
FIXTURES = (
    ("mnist", {"input_size": 32, "mean": [0.1307], "std": [0.3081]}, "1 channel, 32 px, Sequential, Flatten -> Linear"),
    ("cifar", {"input_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}, "3 channels, 32 px, Flatten -> Linear"),
    ("modern", {"input_size": 224, "classes": "none"}, "GELU, SiLU, Hardswish, GroupNorm, LayerNorm, depthwise, 224 px"),
    ("backbone", {"input_size": 512}, "no classifier, 512 px"),
    ("multispectral", {"input_size": 32, "mean": [0.5] * 4, "std": [0.25] * 4, "classes": "planes"},
     "4 channels (.npy and TIFF, `write_planes`), 32 px, classes named by the folders"),
)


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def _images(given: Path | None, work: Path, count: int) -> Path:
    if given is not None:
        return given
    from precompute.running.images import locate_images

    source = locate_images(None)
    target = work / "images"
    for path in sorted(source.rglob("*.JPEG"))[:count] + sorted(source.rglob("*.jpg"))[:count]:
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, destination)
    return target


def _render_pair(factory: str, work: Path, weights: Path, steps: int) -> None:
    """One unit of the fixture's second conv (``3``) rendered sized to the network, then at 224 px with Lucid's
    transforms (how it rendered before), alternately 3 times; the medians and their ratio."""
    import statistics

    import torch

    from precompute.models import load
    from precompute.optvis import objectives
    from precompute.optvis.param import fourier
    from precompute.optvis.render import render
    from precompute.optvis.transform import STANDARD, fit

    torch.set_num_threads(os.cpu_count() or 1)
    net = load(f"tests.support.own_models:{factory}", weights, work / f"{factory}.json").net
    sized = fit(net.spec.input_size, net.spec.fixed_input, 224)
    ways = {"sized": (sized.size, sized.transforms), "224 px": (224, STANDARD)}
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(3):
        for name, (size, transforms) in ways.items():
            started = time.perf_counter()
            render(net, objectives.channel("3", [0]), fourier(size, channels=net.spec.channels), [0], transforms,
                   steps=steps)
            times[name].append(time.perf_counter() - started)
    sized_s, full_s = statistics.median(times["sized"]), statistics.median(times["224 px"])
    print(f"{factory}: one unit, {steps} steps: sized ({sized.size} px on a {sized.transforms.canvas(sized.size)} px "
          f"canvas) {sized_s:.2f} s, 224 px (canvas {STANDARD.canvas(224)}) {full_s:.2f} s, ratio {full_s / sized_s:.1f}x")
    units = list(range(16))  # the stages render a layer's units in batches (one image per unit)
    started = time.perf_counter()
    render(net, objectives.channel("3", units), fourier(sized.size, channels=net.spec.channels), units,
           sized.transforms, steps=steps)
    batched = time.perf_counter() - started
    print(f"{factory}: 16 units in one batch, sized, {steps} steps: {batched:.2f} s, {batched / 16:.2f} s a unit")


def main() -> None:
    from tests import own_models

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=Path, default=None)
    parser.add_argument("--count", type=int, default=100, help="Shared images used when --images is not given.")
    parser.add_argument("--render", choices=("mnist", "cifar"), default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--early-steps", type=int, default=None)
    arguments = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="own-models-"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        chosen = [f for f in FIXTURES if f[0] == arguments.render] if arguments.render else FIXTURES
        for factory, names, described in chosen:
            weights = own_models.write_checkpoint(getattr(own_models, factory)(), work / f"{factory}.pt")
            (work / f"{factory}.json").write_text(json.dumps({"name": factory, **names}), encoding="utf-8")
            common = ["--model", f"tests.support.own_models:{factory}", "--weights", str(weights), "--names",
                      str(work / f"{factory}.json"), "--data", str(work / f"{factory}-store"), "--device", "cpu"]
            if arguments.render:
                _render_pair(factory, work, weights, arguments.steps or 512)
                continue
            if factory == "multispectral":  # arrays of its 4 channels, as many as the images of the others
                images = own_models.write_planes(work / "planes", per_class=-(-arguments.count // 3))
            else:
                images = _images(arguments.images, work, arguments.count)
            steps = (["--steps", str(arguments.steps)] if arguments.steps else []) + (
                ["--early-steps", str(arguments.early_steps)] if arguments.early_steps else [])
            command = [sys.executable, "-m", "precompute.cli", "precompute", "all", *common, "--images",
                       str(images), *steps]
            started = time.perf_counter()
            result = subprocess.run(command, env=env, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if result.returncode != 0:
                print(f"{factory}: failed\n{result.stderr[-1500:]}")
                continue
            store = work / f"{factory}-store"
            print(f"| {factory} | {described} | {seconds:.1f} s | {_size(store) / 1e6:.1f} MB |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
