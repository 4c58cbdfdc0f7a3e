"""Benchmark: one precompute stage as 1 process against n concurrent shards into one store.

Each run starts from a fresh catalogued SQLite store (or the PostgreSQL URL
given); prints one JSON line with both wall times and the speedup.

    python bench/shards.py [--stage circuits|examples] [--shards 2] [--layers all] [--database-url URL]
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


def run(stage: list[str], data: Path, shards: int, env: dict[str, str]) -> float:
    command = [sys.executable, "-m", "precompute.cli"]
    subprocess.run([*command, "precompute", "catalog", "--data", str(data)], env=env, check=True, capture_output=True)
    started = time.perf_counter()
    processes = [
        subprocess.Popen([*command, *stage, "--data", str(data), *(["--shard", f"{i}/{shards}"] if shards > 1 else [])],
                         env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for i in range(shards)
    ]
    for process in processes:
        _, err = process.communicate()
        if process.returncode:
            sys.exit(err.decode()[-2000:])
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="circuits", choices=["circuits", "examples"])
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--layers", default="all")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per process (0: torch's default)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    stage = ["precompute", args.stage, "--layers", args.layers]
    with tempfile.TemporaryDirectory() as work:
        one = run(stage, Path(work) / "one", 1, env)
        many = run(stage, Path(work) / "many", args.shards, env)
    print(json.dumps({"stage": args.stage, "layers": args.layers, "shards": args.shards, "cores": os.cpu_count(),
                      "one_process_s": round(one, 1), "sharded_s": round(many, 1), "speedup": round(one / many, 2)}))


if __name__ == "__main__":
    main()
