"""`microscope precompute all` on torchvision's models with seeded weights: wall time per stage, layers and units.

    python bench/models.py --models alexnet,resnet50,googlenet,vgg19 [--images DIR] [--out bench/out/models]

Each model gets its own store under ``--out``; the stage times are read off the job's own output
(each stage prints its line when it finishes). No real weights are reachable from this project's
machines, so the numbers are the pipeline's cost, not pictures anyone should read.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("catalog", "examples", "circuits", "vis")


def run(model: str, out: Path, images: Path | None) -> dict[str, object]:
    import torch

    from precompute.models import build, seeded_state_dict

    weights = out / f"{model}-seeded.pt"
    torch.save(seeded_state_dict(model, 0), weights)
    spec = build(model).spec
    command = [sys.executable, "-m", "precompute.cli", "precompute", "all", "--model", model, "--weights", str(weights),
               "--data", str(out / model), "--device", "cpu"]
    if images is not None:
        command += ["--images", str(images)]
    started = last = time.perf_counter()
    times: dict[str, float] = {}
    with subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True) as job:
        assert job.stdout is not None
        for line in job.stdout:
            stage = line.split(":", 1)[0]
            if stage in STAGES:
                now = time.perf_counter()
                times[stage] = times.get(stage, 0.0) + now - last
                last = now
    if job.returncode != 0:
        raise SystemExit(f"{model}: precompute all failed ({job.returncode})")
    return {"model": model, "layers": len(spec.layers), "units": sum(layer.channels for layer in spec.layers),
            "main units": sum(layer.channels for layer in spec.main_layers), **times,
            "total": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="alexnet,resnet50,googlenet,vgg19")
    parser.add_argument("--images", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/models")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print("| model | layers | units (main) | catalog | examples | circuits | vis | total |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        row = run(model, args.out, args.images)
        stages = " | ".join(f"{row.get(stage, 0.0):.0f} s" for stage in STAGES)
        print(f"| {model} | {row['layers']} | {row['units']:,} ({row['main units']:,}) | {stages} | {row['total']:.0f} s |",
              flush=True)


if __name__ == "__main__":
    main()
