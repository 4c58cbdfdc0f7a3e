"""Benchmark: the live side (renders on demand, probes, the fill) beside ``microscope serve``.

(a) Render on demand: for a not-yet-rendered unit of each of conv2d2, mixed3b,
    mixed4c and mixed5b (``--repeats`` units each), the time from the
    request (the POST a unit page sends when it loads) to its image being
    served, with a warm idle worker; p50 per layer.
(b) Probe: an ordinary photo from the image folder, not probed before, from
    upload to the result page complete (its HTML and every image it shows).
(c) Fill throughput at the on-demand recipe: one fill batch per main layer,
    timed in this process on a catalog-only scratch store; units per hour per
    layer, and the implied time for every main-layer unit.
(d) bench/serve.py against the store while a worker runs ``--fill`` beside it.

Prints one JSON line per part. Runs on a scratch copy of STORE (blobs hard-linked,
the database copied) in which the last units of each layer of (a) have no render, so
STORE itself is never written.

    python bench/live.py --data STORE [--images DIR] [--weights DIR] [--repeats 3] [--parts render,probe,fill,serve]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
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
from app.core.jobs import JobQueue  # noqa: E402
from app.core.settings import Settings  # noqa: E402
from tests.support.live_processes import wait_for_heartbeat  # noqa: E402
from tests.support.serving import served  # noqa: E402

MODEL = "inceptionv1_caffe"
LAYERS = ("conv2d2", "mixed3b", "mixed4c", "mixed5b")


def scratch_copy(source: Settings, target: Path, repeats: int) -> tuple[Settings, dict[str, list[int]]]:
    """STORE's copy, without the renders of the last ``repeats`` units of each benchmarked layer."""
    from sqlalchemy import delete, select

    from app.core.store import Artifact, Layer, Store, Unit

    with Store.open(source) as store, store.engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    shutil.copytree(source.blob_dir, target / "blobs", copy_function=os.link)
    shutil.copy2(source.data_dir / "microscope.sqlite", target / "microscope.sqlite")
    settings = Settings.load(target)
    chosen = {}
    with Store.open(settings) as store, store.transaction() as session:
        for layer in LAYERS:
            rows = session.execute(select(Unit.index, Unit.id).join(Layer, Unit.layer_id == Layer.id)
                                   .where(Layer.name == layer).order_by(Unit.index.desc()).limit(repeats)).all()
            chosen[layer] = sorted(index for index, _ in rows)
            session.execute(delete(Artifact).where(Artifact.unit_id.in_([unit_id for _, unit_id in rows]),
                                                   Artifact.technique == "channel"))
    return settings, chosen


def time_render(client: httpx.Client, layer: str, unit: int) -> float:
    started = time.perf_counter()
    client.post(urls.render(MODEL, layer, unit, json=True)).raise_for_status()
    while True:
        status = client.get(urls.render(MODEL, layer, unit, json=True)).json()
        if status["state"] == "rendered":
            client.get(status["unit"]["image_url"]).raise_for_status()
            return time.perf_counter() - started
        time.sleep(0.05)


def time_probe(client: httpx.Client, photo: Path) -> float:
    started = time.perf_counter()
    answer = client.post(urls.probes(MODEL), content=photo.read_bytes(), headers={"content-type": "image/jpeg"})
    answer.raise_for_status()
    while client.get(answer.json()["json_url"]).json()["state"] != "done":
        time.sleep(0.05)
    page = client.get(answer.json()["url"]).text
    for source in set(re.findall(r'src="(/blobs/[^"]+)"', page)):
        client.get(source).raise_for_status()
    return time.perf_counter() - started


def fill_throughput(weights: Path | None, batch: int) -> dict[str, object]:
    import torch

    from app.core.store import Store
    from app.core.zoo import get_model
    from precompute.stages.catalog import catalog
    from precompute.running.devices import pick_device
    from precompute.running.context import Stage
    from precompute.stages.vis import on_demand_config, run_vis
    from precompute.models.weight_files import locate
    from precompute.models.bvlc import load_network

    spec = get_model(MODEL)
    net, checksums = load_network(spec, locate(spec, weights))
    device = pick_device("auto")
    per_layer = {}
    with tempfile.TemporaryDirectory() as scratch, Store.open(Settings.load(Path(scratch)), create=True) as store:
        catalog(store, spec)
        for layer in spec.main_layers:
            config = on_demand_config(layer, range(batch), batch=batch, input_size=net.spec.input_size)
            started = time.perf_counter()
            run_vis(Stage(store, net.to(device), checksums.digest, device, progress=False), config)
            per_layer[layer.name] = (time.perf_counter() - started) / batch
    hours = sum(per_layer[layer.name] * layer.channels for layer in spec.main_layers) / 3600
    units = sum(layer.channels for layer in spec.main_layers)
    return {"part": "fill", "batch": batch, "threads": torch.get_num_threads(),
            "seconds_per_unit": {name: round(value, 2) for name, value in per_layer.items()},
            "units_per_hour": round(units / hours), "main_layer_units": units, "hours_for_all": round(hours, 1)}


def start_worker(settings: Settings, weights: Path | None, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "precompute.cli", "worker", "--data", str(settings.data_dir), *extra]
    if weights:
        command += ["--weights", str(weights)]
    process = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(ROOT)},
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_for_heartbeat(JobQueue.for_store(settings), process, timeout=300)
    return process


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--images", type=Path, default=ROOT.parent / "shared/data/imagenet-sample")
    parser.add_argument("--weights", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--probes", type=int, default=3)
    parser.add_argument("--fill-batch", type=int, default=4)
    parser.add_argument("--parts", default="render,probe,fill,serve", help="Which parts to run, comma-separated.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.data.resolve().parent) as scratch:
        settings, chosen = scratch_copy(Settings.load(args.data), Path(scratch), args.repeats)
        run(settings, chosen, args)


def run(settings: Settings, chosen: dict[str, list[int]], args: argparse.Namespace) -> None:
    parts = set(args.parts.split(","))
    if parts & {"render", "probe"}:
        with served(settings.data_dir) as base, httpx.Client(base_url=base, timeout=60) as client:
            worker = start_worker(settings, args.weights)
            try:
                if "render" in parts:
                    print(json.dumps({"part": "render on demand", "layers": renders(client, chosen)}), flush=True)
                if "probe" in parts:
                    probed = probes(client, args.images, args.probes)
                    print(json.dumps({"part": "probe", "p50_s": round(statistics.median(probed), 2),
                                      "all_s": [round(t, 2) for t in probed]}), flush=True)
            finally:
                stop(worker)
    if "fill" in parts:
        print(json.dumps(fill_throughput(args.weights, args.fill_batch)), flush=True)
    if "serve" in parts:
        worker = start_worker(settings, args.weights, "--fill")
        try:
            out = subprocess.run([sys.executable, str(ROOT / "bench/serve.py"), "--data", str(settings.data_dir)],
                                 capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        finally:
            stop(worker)
        print(json.dumps({"part": "serve while a worker fills (niced)", **json.loads(out)}), flush=True)


def renders(client: httpx.Client, chosen: dict[str, list[int]]) -> dict[str, dict[str, object]]:
    measured = {}
    for layer in LAYERS:
        times = [time_render(client, layer, unit) for unit in chosen[layer]]
        measured[layer] = {"p50_s": round(statistics.median(times), 2), "all_s": [round(t, 2) for t in times]}
    return measured


def probes(client: httpx.Client, images: Path, count: int) -> list[float]:
    """Photos not probed before, from upload to the result page complete."""
    import hashlib

    probed = []
    for photo in sorted(images.glob("*/*.jpg"))[500:]:
        if len(probed) == count:
            break
        if client.get(urls.probe(MODEL, hashlib.sha256(photo.read_bytes()).hexdigest(), json=True)).status_code == 404:
            probed.append(time_probe(client, photo))
    return probed


if __name__ == "__main__":
    main()
