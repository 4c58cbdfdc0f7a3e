"""Benchmark: the examples stage, two ways.

``ratio``: the examples pass (all main and branch layers) against a plain
forward pass. Both read the same images through the same loader at the same
batch size; the two alternate round by round in one run, and the script
prints one JSON line with images/s of each (median over rounds) and their
ratio.

``scale``: the whole stage (`microscope precompute examples`, every layer)
as a process of its own, once per number of decode workers on the first
image count, then with the last number of workers on each further count
(the shared images repeated under other names, as links, up to the count).
First, decoding alone (no network) with each number of workers: what they
can feed a GPU. Prints a JSON line per run: the pass's images/s, wall time, the peak memory
of the process and its decode workers together (proportional set size, so
pages they share count once), and the hours the pass would take over
ImageNet's 1,281,167 training images at that rate.

    python bench/examples.py ratio [--images DIR] [--count 256] [--batch 32] [--rounds 3] [--device auto]
    python bench/examples.py scale [--images DIR] [--counts 1000,10000] [--workers 1,2] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.core.zoo import get_model  # noqa: E402
from precompute.running.devices import pick_device  # noqa: E402
from precompute.stages.examples import input_transform  # noqa: E402
from precompute.running.images import batches, list_images, locate_images  # noqa: E402
from precompute.methods.ranking import RunningStatistics  # noqa: E402
from precompute.models.weight_files import locate  # noqa: E402
from precompute.models.bvlc import load_network  # noqa: E402


IMAGENET_TRAIN = 1_281_167


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    ratio_mode = modes.add_parser("ratio", help="the examples pass against a plain forward pass")
    ratio_mode.add_argument("--count", type=int, default=256)
    ratio_mode.add_argument("--batch", type=int, default=32)
    ratio_mode.add_argument("--workers", type=int, default=1)
    ratio_mode.add_argument("--rounds", type=int, default=3)
    scale_mode = modes.add_parser("scale", help="the whole stage: images/s by decode workers, peak memory by images")
    scale_mode.add_argument("--counts", default="1000,10000")
    scale_mode.add_argument("--workers", default="1,2")
    scale_mode.add_argument("--batch", type=int, default=32)
    for mode in (ratio_mode, scale_mode):
        mode.add_argument("--images", type=Path)
        mode.add_argument("--weights", type=Path)
        mode.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.mode == "ratio":
        ratio(args)
    else:
        scale(args)


def ratio(args: argparse.Namespace) -> None:
    spec = get_model("inceptionv1_caffe")
    device = pick_device(args.device)
    net = load_network(spec, locate(spec, args.weights))[0].to(device)
    files = list_images(locate_images(args.images))[: args.count]
    transform = input_transform(spec)

    def plain() -> None:
        for batch in batches(files, transform, args.batch, args.workers):
            net.logits(batch.images.to(device).contiguous(memory_format=torch.channels_last))

    def examples() -> None:
        running = RunningStatistics(spec, spec.layers, 40, device)
        for batch in batches(files, transform, args.batch, args.workers):
            images = batch.images.to(device).contiguous(memory_format=torch.channels_last)
            running.observe(net, images, torch.tensor(batch.indices))
        if device.type == "cuda":
            torch.cuda.synchronize()

    timings: dict[str, list[float]] = {"forward": [], "examples": []}
    with torch.inference_mode():
        plain()  # warm-up: allocator, kernels, page cache
        for _ in range(args.rounds):
            for name, job in (("forward", plain), ("examples", examples)):
                started = time.perf_counter()
                job()
                timings[name].append(len(files) / (time.perf_counter() - started))
    forward, with_examples = statistics.median(timings["forward"]), statistics.median(timings["examples"])
    print(json.dumps({
        "device": str(device), "images": len(files), "batch": args.batch, "layers": len(spec.layers),
        "forward_images_per_s": round(forward, 2), "examples_images_per_s": round(with_examples, 2),
        "ratio": round(with_examples / forward, 3),
    }))


def scale(args: argparse.Namespace) -> None:
    counts = [int(count) for count in args.counts.split(",")]
    workers = [int(number) for number in args.workers.split(",")]
    source = locate_images(args.images)
    runs = [(counts[0], number) for number in workers] + [(count, workers[-1]) for count in counts[1:]]
    spec = get_model("inceptionv1_caffe")
    for _ in batches(list_images(source)[:8], input_transform(spec), 8, 1):  # starts the workers' fork server
        pass
    for number in workers:  # decoding alone, no network: what the decode workers can feed a fast GPU
        files = list_images(source)[: counts[0]]
        started = time.perf_counter()
        for _ in batches(files, input_transform(spec), args.batch, number):
            pass
        print(json.dumps({"images": len(files), "decode_workers": number, "decode_only_images_per_s":
                          round(len(files) / (time.perf_counter() - started), 1)}), flush=True)
    with tempfile.TemporaryDirectory() as work:
        for count, number in runs:
            images = _repeated(source, Path(work) / f"images-{count}", count)
            result = _stage(images, Path(work) / f"store-{count}-{number}", number, args)
            print(json.dumps({"images": count, "decode_workers": number, "batch": args.batch, "device": args.device,
                              **result, "imagenet_train_pass_h": round(IMAGENET_TRAIN / result["pass_images_per_s"] / 3600, 1)}),
                  flush=True)


def _repeated(source: Path, folder: Path, count: int) -> Path:
    """``count`` images: the source's, then the same again under other names (links, not copies)."""
    if folder.is_dir():
        return folder
    files = [file.full_path for file in list_images(source)]
    for number in range(count):
        target = folder / f"copy{number // len(files)}" / files[number % len(files)].relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(files[number % len(files)].resolve())
    return folder


def _stage(images: Path, data: Path, workers: int, args: argparse.Namespace) -> dict[str, float]:
    """One `precompute examples` run: the pass's rate, wall time and the process tree's peak memory (the sum
    of proportional set sizes: pages the decode workers share with their parent counted once)."""
    command = [sys.executable, "-m", "precompute.cli", "precompute"]
    extra = ["--weights", str(args.weights)] if args.weights else []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([*command, "catalog", "--data", str(data)], check=True, capture_output=True, env=env)
    log = data / "examples.log"
    started = time.perf_counter()
    with log.open("w") as handle:
        process = psutil.Popen([*command, "examples", "--images", str(images), "--data", str(data), "--workers",
                                str(workers), "--batch", str(args.batch), "--device", args.device, *extra],
                               stdout=handle, stderr=subprocess.STDOUT, env=env)
        peak, phase = 0, "start"
        while process.poll() is None:
            try:
                tree = [process, *process.children(recursive=True)]
                now = sum(member.memory_full_info().pss for member in tree)
            except psutil.Error:  # a decode worker ended between listing and reading
                time.sleep(0.05)
                continue
            if now > peak:  # which bar was running then: "examples" (the pass), "crops", or after it (the write)
                peak, phase = now, _phase(log.read_text()[-400:], phase)
            time.sleep(0.2)
    wall = time.perf_counter() - started
    output = log.read_text()
    if process.returncode:
        sys.exit(output[-2000:])
    # The pass's bar at its end: "examples: 100%|...| N/N [MM:SS<00:00, ...]" (its rate is a moving average).
    done, minutes, seconds = re.findall(r"examples: 100%\|[^|]*\| *(\d+)/\d+ \[(\d+):(\d+)<", output)[-1]
    rate = int(done) / max(int(minutes) * 60 + int(seconds), 1)
    return {"pass_images_per_s": round(rate, 2), "wall_s": round(wall, 1), "peak_pss_mb": round(peak / 2**20),
            "peak_during": phase}


def _phase(tail: str, last: str) -> str:
    """The stage's phase from the end of its output: the last bar named there, "write" once crops are done."""
    bars = re.findall(r"(examples|crops): +(\d+)%", tail)
    if not bars:
        return last
    name, percent = bars[-1]
    return "write" if name == "crops" and percent == "100" else name


if __name__ == "__main__":
    main()
