"""`microscope precompute all` per model: wall time per stage, layers, units, store size, and a contact sheet.

    python bench/models.py --models squeezenet1_1_caffe,mobilenet_v2,efficientnet_lite0 [--images DIR]
    python bench/models.py --models resnet50 --seeded       # torchvision's weights are out of reach here

Each model gets its own store under ``--out``; the stage times are read off the job's own output
(each stage prints its line when it finishes). Real weights by default (the registry's sources:
../shared, else the pinned download); ``--seeded`` uses seeded random weights, the pipeline's cost
without pictures anyone should read. Each run saves ``bench/out/contact-<model>.jpg``: the channel
visualizations of units 0-3 of every main layer, one row a layer.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STAGES = ("catalog", "examples", "circuits", "vis")


def run(model: str, out: Path, images: Path | None, seeded: bool) -> dict[str, object]:
    from precompute.models import build

    command = [sys.executable, "-m", "precompute.cli", "precompute", "all", "--model", model,
               "--data", str(out / model), "--device", "cpu"]
    if seeded:
        import torch

        from precompute.models import seeded_state_dict

        weights = out / f"{model}-seeded.pt"
        torch.save(seeded_state_dict(model, 0), weights)
        command += ["--weights", str(weights)]
    if images is not None:
        command += ["--images", str(images)]
    spec = build(model).spec
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
    size = sum(file.stat().st_size for file in (out / model).rglob("*") if file.is_file())
    return {"model": model, "layers": len(spec.layers), "units": sum(layer.channels for layer in spec.layers),
            "main units": sum(layer.channels for layer in spec.main_layers), **times,
            "total": time.perf_counter() - started, "store MB": size / 1e6}


def contact_sheet(model: str, store_dir: Path, target: Path, units: int = 4, side: int = 96) -> Path:
    """Units 0..``units``-1 of every main layer with a channel render, one row a layer, labelled."""
    from PIL import Image, ImageDraw
    from sqlalchemy import select

    from app.core.settings import Settings
    from app.core.store import Store
    from app.core.store.schema import Artifact, Layer, Model, Unit

    rows: list[tuple[str, list[bytes]]] = []
    with Store.open(Settings.load(store_dir, None), readonly=True) as store, store.session() as session:
        layers = session.execute(
            select(Layer.id, Layer.name).join(Model).where(Model.name == model,
                                                          Layer.kind.in_(("conv", "mixed", "residual")))
            .order_by(Layer.position)).all()
        for layer_id, name in layers:
            keys = session.scalars(
                select(Artifact.blob_key).join(Unit).where(Unit.layer_id == layer_id, Unit.index < units,
                                                           Artifact.technique == "channel").order_by(Unit.index)).all()
            if keys:
                rows.append((name, [store.blobs.get(key) for key in keys]))
    label = 190
    sheet = Image.new("RGB", (label + units * side, max(1, len(rows)) * side), "white")
    draw = ImageDraw.Draw(sheet)
    for row, (name, images) in enumerate(rows):
        draw.text((4, row * side + side // 2 - 6), name, fill="black")
        for column, data in enumerate(images):
            tile = Image.open(io.BytesIO(data)).convert("RGB").resize((side, side))
            sheet.paste(tile, (label + column * side, row * side))
    target.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(target, quality=88)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="squeezenet1_1_caffe,mobilenet_v2,efficientnet_lite0")
    parser.add_argument("--images", type=Path)
    parser.add_argument("--seeded", action="store_true", help="seeded random weights instead of the real ones")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/models")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"weights: {'seeded random' if args.seeded else 'real (the registry sources)'}; "
          f"{time.strftime('%Y-%m-%d')}")
    print("| model | layers | units (main) | catalog | examples | circuits | vis | total | store |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        row = run(model, args.out, args.images, args.seeded)
        stages = " | ".join(f"{row.get(stage, 0.0):.0f} s" for stage in STAGES)
        print(f"| {model} | {row['layers']} | {row['units']:,} ({row['main units']:,}) | {stages} | "
              f"{row['total']:.0f} s | {row['store MB']:.0f} MB |", flush=True)
        sheet = contact_sheet(model, args.out / model, ROOT / f"bench/out/contact-{model}.jpg")
        print(f"  contact sheet: {sheet.relative_to(ROOT)}", flush=True)


if __name__ == "__main__":
    main()
