"""Benchmark: a stage as 1 process against the same stage as tasks on a local Ray cluster (2 worker slots).

Each run starts from a fresh catalogued SQLite store; the Ray run uses
``--ray`` on a head node started here (``ray start --head --num-cpus N``).
Prints one JSON line per stage with both wall times, the speedup and
whether the two stores are equal row for row (``tests/support/contents.py``).

    python bench/ray.py [--stages circuits,examples] [--cpus 2] [--images DIR] [--layers all]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.settings import Settings  # noqa: E402
from tests.support.contents import contents  # noqa: E402
from tests.support.ray_cluster import ray_cluster  # noqa: E402


def run(stage: list[str], data: Path, env: dict[str, str], ray: str | None) -> float:
    command = [sys.executable, "-m", "precompute.cli", "precompute"]
    subprocess.run([*command, "catalog", "--data", str(data)], env=env, check=True, capture_output=True)
    started = time.perf_counter()
    done = subprocess.run([*command, *stage, "--data", str(data), *(["--ray", ray] if ray else [])],
                          env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(done.stderr[-2000:])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="circuits,examples")
    parser.add_argument("--cpus", type=int, default=2, help="the cluster's worker slots (tasks per stage)")
    parser.add_argument("--images", type=Path, help="image folder of the examples stage (default: the shared sample)")
    parser.add_argument("--layers", default="all")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with ray_cluster(cpus=args.cpus) as address, tempfile.TemporaryDirectory() as work:
        for name in args.stages.split(","):
            stage = [name, "--layers", args.layers, *(["--images", str(args.images)] if args.images and name == "examples" else [])]
            one = run(stage, Path(work) / f"{name}-one", env, None)
            many = run(stage, Path(work) / f"{name}-ray", env, address)
            equal = contents(Settings.load(Path(work) / f"{name}-one")) == contents(Settings.load(Path(work) / f"{name}-ray"))
            print(json.dumps({"stage": name, "layers": args.layers, "ray_cpus": args.cpus, "cores": os.cpu_count(),
                              "one_process_s": round(one, 1), "ray_s": round(many, 1), "speedup": round(one / many, 2),
                              "stores_equal": equal}), flush=True)


if __name__ == "__main__":
    main()
