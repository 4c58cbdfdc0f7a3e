"""The tuning stage over every main layer of a model: its time per layer, and mixed3b's curve family.

    python bench/tuning.py --data microscope-data [--model inceptionv1_caffe] [--device cpu] [--layers main]

Copies the store's database (its blobs are only read) into a scratch folder, removes any tuning it
holds there, and runs the stage (every family, joint tuning where the receptive field fits inside the
input) on the copy, timed per layer. Then prints, for mixed3b (where there is one), the 10 most
curve-selective units with their preferred orientation and radius, and how much of the circle the
layer's curve family spans: the preferred orientations of its 30 most curve-selective units, by
45-degree sector. The store at --data needs its examples (`microscope precompute all` makes them).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.scratch import scratch_copy  # noqa: E402


def main() -> None:
    import torch
    from sqlalchemy import delete, select

    from app.core.settings import Settings
    from app.core.store import Layer, Run, Store, Unit, UnitTuning
    from precompute.running.devices import pick_device
    from precompute.models import load
    from precompute.running.selection import parse_layers
    from precompute.running.context import Stage
    from precompute.stages.tuning import TuningConfig, run_tuning

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=ROOT / "microscope-data")
    parser.add_argument("--model", default="inceptionv1_caffe")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--layers", default="main")
    arguments = parser.parse_args()
    loaded = load(arguments.model, None)
    device = pick_device(arguments.device)
    net = loaded.net.to(device)
    with scratch_copy(arguments.data) as copy:
        with Store.open(Settings.load(copy)) as store:
            with store.transaction() as session:
                session.execute(delete(UnitTuning))
                session.execute(delete(Run).where(Run.stage == "tuning"))
            layers = tuple(parse_layers(net.spec, arguments.layers))
            started = time.perf_counter()
            result = run_tuning(Stage(store, net, loaded.weights_sha256, device), TuningConfig(layers=layers))
            seconds = time.perf_counter() - started
            with store.session() as session:
                curves = session.execute(
                    select(Unit.index, UnitTuning.selectivity, UnitTuning.preferred, UnitTuning.figures)
                    .join(Unit, UnitTuning.unit_id == Unit.id).join(Layer, Unit.layer_id == Layer.id)
                    .where(Layer.name == "mixed3b", UnitTuning.family == "curves")
                    .order_by(UnitTuning.selectivity.desc())).all()
    print(f"tuning stage on {device} ({torch.get_num_threads()} threads): {seconds:.0f} s for {result.units} units "
          f"of {result.layers_tuned} layers")
    for note in result.notes:
        print(f"note: {note}")
    print("| layer | units | seconds |")
    print("|---|---|---|")
    for layer in layers:
        print(f"| {layer.name} | {layer.channels} | {result.seconds.get(layer.name, 0):.1f} |")
    if curves:
        print("mixed3b, the 10 most curve-selective units:")
        print("| unit | selectivity | orientation | radius | polarity | curve/line | resultant | drive |")
        print("|---|---|---|---|---|---|---|---|")
        for index, selectivity, preferred, figures in curves[:10]:
            print(f"| {index} | {selectivity:.3f} | {preferred['orientation']:g} | {preferred['radius']:g} | "
                  f"{'light' if preferred['polarity'] > 0 else 'dark'} | {figures.get('curve_over_line') or 'lines <= 0'} | "
                  f"{figures['resultant_length']:.2f} | {figures.get('drive')} |")
        sectors = Counter(int(preferred["orientation"] // 45) * 45 for _, _, preferred, _ in curves[:30])
        print("mixed3b's 30 most curve-selective units by preferred orientation (45-degree sectors): "
              + ", ".join(f"{start}-{start + 45}: {sectors.get(start, 0)}" for start in range(0, 360, 45)))


if __name__ == "__main__":
    main()
