"""Benchmark: unit pages served by ``microscope serve`` on loopback.

(a) Throughput: wrk (Debian's package) with 16 connections for a fixed
    duration, each request a random unit page of any layer, HTML or JSON.
(b) Latency: an open-loop client in its own process offers a fixed 100 unit
    pages per second for 20 seconds and times each from its scheduled start
    (no coordinated omission); p50 and p99.
Prints one JSON line: requests/s, p50 and p99 in ms, and the error counts.

    python bench/serve.py --data STORE [--workers 2] [--duration 10] [--rate 100] [--seconds 20]

STORE must hold a catalog, examples and circuits (the README's main command makes one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app import urls  # noqa: E402
from app.catalog import Catalog  # noqa: E402
from app.core.settings import Settings  # noqa: E402
from app.core.store import Store  # noqa: E402

WRK_SCRIPT = """
local paths = {}
for line in io.lines(os.getenv("PATHS")) do paths[#paths + 1] = line end
math.randomseed(os.time())
request = function() return wrk.format("GET", paths[math.random(#paths)]) end
done = function(summary, latency, requests)
  io.stderr:write(string.format('{"requests": %d, "seconds": %f, "non_2xx": %d, "socket_errors": %d}\\n',
    summary.requests, summary.duration / 1e6, summary.errors.status,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
"""


def unit_paths(settings: Settings, count: int, seed: int = 0) -> list[str]:
    """Random unit pages over every layer of every model, half HTML and half JSON."""
    with Store.open(settings, readonly=True) as store, store.engine.connect() as connection:
        catalog = Catalog.load(connection)
    units = list(catalog.units.values())
    rng = random.Random(seed)
    return [urls.unit(m, layer, index, json=rng.random() < 0.5) for m, layer, index in rng.choices(units, k=count)]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def throughput(base: str, paths_file: Path, duration: int, connections: int) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "-s", script.name, base],
        capture_output=True, text=True, env={**os.environ, "PATHS": str(paths_file)}, check=True,
    )
    summary = json.loads(result.stderr.strip().splitlines()[-1])
    return {"requests_per_s": summary["requests"] / summary["seconds"], "errors": summary["non_2xx"] + summary["socket_errors"]}


async def _open_loop(base: str, paths: list[str], rate: float, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=10) as client:
        start = time.perf_counter() + 0.5

        async def one(index: int) -> None:
            nonlocal errors
            scheduled = start + index / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                response = await client.get(paths[index % len(paths)])
                ok = response.status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append(time.perf_counter() - scheduled)
            errors += not ok

        await asyncio.gather(*(one(i) for i in range(int(rate * seconds))))
    latencies.sort()
    return {
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
        "latency_errors": errors,
    }


def latency_in_subprocess(base: str, paths_file: Path, rate: float, seconds: float) -> dict[str, float]:
    """The fixed-rate client runs in a process of its own, so it never shares an interpreter with anything."""
    code = (
        "import asyncio, json, sys; sys.path.insert(0, sys.argv[1]); from bench.serve import _open_loop;"
        "paths = open(sys.argv[3]).read().split();"
        "print(json.dumps(asyncio.run(_open_loop(sys.argv[2], paths, float(sys.argv[4]), float(sys.argv[5])))))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(ROOT), base, str(paths_file), str(rate), str(seconds)],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench/serve.py needs wrk: apt-get install wrk")

    settings = Settings.load(args.data)
    paths = unit_paths(settings, 5000)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as listing:
        listing.write("\n".join(paths))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "precompute.cli", "serve", "--data", str(settings.data_dir), "--port", str(port),
         "--workers", str(args.workers)],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                httpx.get(base + "/index.json", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.3)
        for path in paths[:200]:  # warm every worker's catalog and the page cache of the database
            httpx.get(base + path, timeout=10)
        rate = throughput(base, Path(listing.name), args.duration, args.connections)
        latency = latency_in_subprocess(base, Path(listing.name), args.rate, args.seconds)
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(json.dumps({
        "workers": args.workers, "connections": args.connections, "duration_s": args.duration,
        "requests_per_s": round(rate["requests_per_s"], 1), "throughput_errors": rate["errors"],
        "offered_per_s": args.rate, "p50_ms": round(latency["p50_ms"], 2), "p99_ms": round(latency["p99_ms"], 2),
        "errors": rate["errors"] + latency["latency_errors"],
    }))


if __name__ == "__main__":
    main()
