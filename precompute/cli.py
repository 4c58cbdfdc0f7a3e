"""The ``microscope`` command: precompute stages, model checks, store info and the server.

Torch is imported only inside the commands that run a model, so ``microscope
serve`` and ``microscope info`` work where only the server's dependencies are
installed. Every user error (`MicroscopeError`) ends in one line on stderr
and exit status 2; the store is left as it was.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from app.errors import MicroscopeError
from app.settings import Settings
from app.store import Store
from app.zoo import DEFAULT_MODEL, get_model
from precompute.recipes import ON_DEMAND

cli = typer.Typer(
    help="Microscope: a self-hostable neuron microscope for vision networks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
precompute_cli = typer.Typer(help="Offline stages that fill the store (need torch).", no_args_is_help=True)
model_cli = typer.Typer(help="Check a model and its weights.", no_args_is_help=True)
cli.add_typer(precompute_cli, name="precompute")
cli.add_typer(model_cli, name="model")

DataOption = Annotated[
    Optional[Path],
    typer.Option("--data", envvar="MICROSCOPE_DATA", help="Store directory (database file and blobs).",
                 show_default="./microscope-data"),
]
DatabaseOption = Annotated[
    Optional[str],
    typer.Option("--database-url", envvar="MICROSCOPE_DATABASE_URL",
                 help="SQLAlchemy URL of the database (default: SQLite inside --data)."),
]
ModelOption = Annotated[str, typer.Option("--model", help="Model name from the zoo.")]
WeightsOption = Annotated[
    Optional[Path],
    typer.Option("--weights", envvar="MICROSCOPE_WEIGHTS",
                 help="Folder of the model's weight files (default: ../shared/models/<name>, else download)."),
]
ImagesOption = Annotated[
    Optional[Path],
    typer.Option("--images", envvar="MICROSCOPE_IMAGES",
                 help="Image folder (default: ../shared/data/imagenet-sample)."),
]
LayersOption = Annotated[str, typer.Option("--layers", help="'all', 'main' or comma-separated layer names.")]
DeviceOption = Annotated[str, typer.Option("--device", help="'auto' (a GPU when there is one), 'cpu', 'cuda', 'cuda:1'...")]
WorkersOption = Annotated[int, typer.Option("--workers", min=0, help="Image-decoding processes.")]
ShardOption = Annotated[
    Optional[str],
    typer.Option("--shard", help="i/n: do the i-th of n deterministic parts (n processes fill one store together)."),
]


@dataclass(frozen=True)
class _Stage:
    store: Store
    net: Any
    weights_sha256: str
    device: Any


@contextmanager
def _stage(spec: Any, weights: Path | None, device: str, data: Path | None, database_url: str | None,
           create: bool = False) -> Iterator[_Stage]:
    """An open store and the checked network on its device: what every model-running stage starts from."""
    from precompute.devices import pick_device
    from precompute.weight_files import locate
    from precompute.weights import load_network

    with Store.open(Settings.load(data, database_url), create=create) as store:
        target = pick_device(device)
        net, checksums = load_network(spec, locate(spec, weights))
        yield _Stage(store, net.to(target), checksums.digest, target)


@cli.command()
def info(data: DataOption = None, database_url: DatabaseOption = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Print what a store holds, per model, layer and technique."""
    from dataclasses import asdict

    from app.store.summary import coverage

    with Store.open(Settings.load(data, database_url), readonly=True) as store, store.session() as session:
        models = coverage(session)
    if as_json:
        typer.echo(json.dumps([asdict(model) for model in models]))
        return
    for model in models:
        typer.echo(f"{model.name}: {model.title} ({len(model.layers)} layers, {model.units} units)")
        typer.echo(f"  {'layer':<24} {'kind':<7} {'units':>5} {'examples':>8} {'circuits':>8}  rendered")
        for layer in model.layers:
            rendered = ", ".join(f"{name} {count}" for name, count in layer.rendered.items()) or "-"
            typer.echo(f"  {layer.name:<24} {layer.kind:<7} {layer.channels:>5} "
                       f"{layer.with_examples:>8} {layer.with_circuits:>8}  {rendered}")
        stale = [(layer.name, stage, count) for layer in model.layers for stage, count in layer.stale.items()]
        if stale:
            typer.echo(f"  stale (made by an older algorithm; `microscope precompute all` or the stage recomputes them):")
            for name, stage, count in stale:
                typer.echo(f"    {name:<24} {stage:<9} {count} units")


@cli.command()
def serve(
    data: DataOption = None,
    database_url: DatabaseOption = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Server processes (one per core serves most).")] = 1,
) -> None:
    """Serve a store read-only in the browser and as JSON (never runs a model)."""
    import os

    import uvicorn

    settings = Settings.load(data, database_url)
    Store.open(settings, readonly=True).close()  # fail now, in one line, on a missing or newer store
    os.environ["MICROSCOPE_DATA"] = str(settings.data_dir)
    os.environ["MICROSCOPE_DATABASE_URL"] = settings.database_url
    typer.echo(f"serving {settings.data_dir} at http://{host}:{port}/")
    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, workers=workers,
                log_level="warning", access_log=False)


@cli.command("export")
def export(
    bundle: Annotated[Path, typer.Argument(help="The archive to write (a .tar).")],
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Write the whole store (rows and every blob they point at) as one archive."""
    from app.store.bundle import export_bundle

    with Store.open(Settings.load(data, database_url), readonly=True) as store:
        summary = export_bundle(store, bundle)
    typer.echo(f"exported {sum(summary.rows.values())} rows and {summary.blobs} blobs to {summary.path}")


@cli.command("import")
def import_(
    bundle: Annotated[Path, typer.Argument(help="An archive written by `microscope export`.")],
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Read an archive into an empty (or new) store, checking every blob against its key."""
    from app.store.bundle import import_bundle

    summary = import_bundle(bundle, Settings.load(data, database_url))
    typer.echo(f"imported {sum(summary.rows.values())} rows and {summary.blobs} blobs from {summary.path}")


@cli.command()
def gc(
    data: DataOption = None,
    database_url: DatabaseOption = None,
    probes_older_than: Annotated[Optional[float], typer.Option(
        "--probes-older-than", min=0, help="Also remove users' probes made more than DAYS days ago.",
        metavar="DAYS")] = None,
) -> None:
    """Remove blobs no row points at and files half-written by interrupted stages (run when no stage is)."""
    from datetime import UTC, datetime

    from app.store.maintenance import collect_garbage, remove_probes

    with Store.open(Settings.load(data, database_url)) as store:
        if probes_older_than is not None:
            removed = remove_probes(store, probes_older_than, datetime.now(UTC).replace(tzinfo=None))
            typer.echo(f"gc: removed {removed} probes made more than {probes_older_than:g} days ago")
        collected = collect_garbage(store)
    typer.echo(f"gc: removed {collected.blobs_removed} unreferenced blobs and {collected.partial_files_removed} "
               f"partial files; {collected.missing} referenced blobs missing")
    if collected.missing:
        raise typer.Exit(1)


@precompute_cli.command("catalog")
def precompute_catalog(model: ModelOption = DEFAULT_MODEL, shard: ShardOption = None, data: DataOption = None,
                       database_url: DatabaseOption = None) -> None:
    """Write the model, layer and unit rows (with class names); idempotent."""
    from precompute.catalog import catalog
    from precompute.selection import parse_shard

    spec = get_model(model)
    part = parse_shard(shard)
    with Store.open(Settings.load(data, database_url), create=True) as store:
        result = catalog(store, spec, shard=part)
    typer.echo(f"{result.model}: {result.layers_added} layers and {result.units_added} units added")


@precompute_cli.command("examples")
def precompute_examples(
    model: ModelOption = DEFAULT_MODEL,
    layers: LayersOption = "all",
    images: ImagesOption = None,
    k: Annotated[int, typer.Option("-k", help="Top and bottom examples kept per unit.")] = 40,
    batch: Annotated[int, typer.Option(help="Images per forward pass.")] = 32,
    workers: WorkersOption = 1,
    device: DeviceOption = "auto",
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Batches between checkpoints.")] = 8,
    shard: ShardOption = None,
    weights: WeightsOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Top and bottom dataset examples of every unit, in one resumable streaming pass."""
    from precompute.examples import ExamplesConfig, run_examples
    from precompute.images import locate_images
    from precompute.selection import parse_layers, parse_shard

    spec = get_model(model)
    part = parse_shard(shard)
    config = ExamplesConfig(layers=tuple(parse_layers(spec, layers)), k=k, batch_size=batch, workers=workers,
                            checkpoint_every=checkpoint_every)
    root = locate_images(images)
    with _stage(spec, weights, device, data, database_url) as stage:
        result = run_examples(stage.store, spec, stage.net, stage.weights_sha256, root, config, stage.device, shard=part)
    for message in result.messages:
        typer.echo(f"{'note' if result.waiting else 'warning'}: {message}", err=True)
    if result.waiting:
        return
    if result.reused:
        typer.echo(f"examples: already computed for {len(config.layers)} layers with this recipe; nothing to do")
        return
    if result.skipped:
        typer.echo(f"warning: skipped {len(result.skipped)} unreadable images:", err=True)
        for failure in result.skipped:
            typer.echo(f"  {failure}", err=True)
    typer.echo(f"examples: {result.examples} examples of {len(config.layers)} layers from {result.images} images")


@precompute_cli.command("vis")
def precompute_vis(
    model: ModelOption = DEFAULT_MODEL,
    layers: LayersOption = "main",
    units: Annotated[str, typer.Option("--units", help="'all', N or START:STOP (per layer).")] = "0:8",
    techniques: Annotated[str, typer.Option("--techniques", help="Comma-separated: channel, neuron, negative, diversity, pixels (channel in the pixel basis).")] = "channel",
    steps: Annotated[int, typer.Option(help="Optimization steps (Lucid: 512).")] = 512,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = 224,
    batch: Annotated[int, typer.Option(help="Images optimized together.")] = 32,
    seed: Annotated[int, typer.Option(help="Base seed; each image's seed derives from it and the unit.")] = 0,
    precision: Annotated[str, typer.Option(help="auto (bf16 where native), fp32 or bf16.")] = "auto",
    device: DeviceOption = "auto",
    shard: ShardOption = None,
    weights: WeightsOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Feature visualizations of the chosen units, batched; skips what is stored with the same recipe."""
    from precompute.selection import parse_layers, parse_shard, units_per_layer
    from precompute.vis import VisConfig, run_vis

    spec = get_model(model)
    if precision not in ("auto", "fp32", "bf16"):
        raise MicroscopeError(f"--precision {precision!r}: choose auto, fp32 or bf16")
    chosen = parse_layers(spec, layers)
    part = parse_shard(shard)
    config = VisConfig(
        layers=tuple(chosen), units=units_per_layer(chosen, units, explicit=layers not in ("all", "main")),
        techniques=tuple(t.strip() for t in techniques.split(",") if t.strip()), steps=steps, size=size,
        batch=batch, seed=seed, precision=precision,  # type: ignore[arg-type]
    )
    with _stage(spec, weights, device, data, database_url) as stage:
        result = run_vis(stage.store, spec, stage.net, stage.weights_sha256, config, stage.device, shard=part)
    typer.echo(f"vis: {result.rendered} images rendered, {result.skipped} already stored with this recipe")


@precompute_cli.command("circuits")
def precompute_circuits(
    model: ModelOption = DEFAULT_MODEL,
    layers: LayersOption = "all",
    shard: ShardOption = None,
    weights: WeightsOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Strongest input and output weights of every unit (expanded across blocks); resumable by layer pair."""
    from precompute.circuits import run_circuits
    from precompute.selection import parse_layers, parse_shard

    spec = get_model(model)
    chosen = parse_layers(spec, layers)
    part = parse_shard(shard)
    with _stage(spec, weights, "cpu", data, database_url) as stage:
        result = run_circuits(stage.store, spec, stage.net, stage.weights_sha256, chosen, shard=part)
    typer.echo(f"circuits: {result.edges} edges in {result.pairs_written} layer pairs written, "
               f"{result.pairs_reused} already stored")


@precompute_cli.command("all")
def precompute_all(
    model: ModelOption = DEFAULT_MODEL,
    images: ImagesOption = None,
    vis_units: Annotated[str, typer.Option(help="Units of every main layer to render (channel technique).")] = "0:4",
    vis_layer: Annotated[str, typer.Option(help="The layer whose units get every technique.")] = "mixed4c",
    vis_class: Annotated[int, typer.Option(help="The class logit rendered in the Fourier and the pixel basis.")] = 488,
    steps: Annotated[int, typer.Option(help="Optimization steps of the default renders.")] = ON_DEMAND.steps,
    early_steps: Annotated[int, typer.Option(
        help="Steps for the conv layers before the first block: cheap to render, and slower to converge.")
    ] = ON_DEMAND.early_steps,
    size: Annotated[int, typer.Option(help="Image side of the default renders.")] = ON_DEMAND.size,
    batch: Annotated[int, typer.Option(help="Images per batch (examples and renders).")] = 16,
    device: DeviceOption = "auto",
    weights: WeightsOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """The main job in one process: catalog, examples and circuits of every unit, a default set of renders.

    Renders the channel technique for ``--vis-units`` of every main layer,
    every technique for those units of ``--vis-layer``, and the class logit
    ``--vis-class`` (488, "chain") in the Fourier and the pixel basis, with
    fewer steps than Lucid's 512 so that the job fits a CPU in minutes (the
    stem's conv layers, cheap to render, get ``--early-steps``; each
    image's recipe is stored and shown on its page). Everything already
    stored with the same recipe is skipped, so a rerun takes seconds; images
    made by an older algorithm are rendered again with their own settings.
    """
    from precompute.catalog import catalog
    from precompute.circuits import run_circuits
    from precompute.examples import ExamplesConfig, run_examples
    from precompute.images import locate_images
    from precompute.selection import units_per_layer
    from precompute.selection import parse_units
    from precompute.vis import TECHNIQUES, VisConfig, run_vis, stale_configs

    spec = get_model(model)
    root = locate_images(images)
    main = list(spec.main_layers)
    logits = next(layer for layer in spec.layers if layer.kind == "logits")
    early = [layer for layer in main if layer.kind == "conv"]
    later = [layer for layer in main if layer.kind != "conv"]
    renders = [
        VisConfig(layers=tuple(early), units=units_per_layer(early, vis_units, explicit=False), techniques=("channel",),
                  steps=early_steps, size=size, batch=batch),
        VisConfig(layers=tuple(later), units=units_per_layer(later, vis_units, explicit=False), techniques=("channel",),
                  steps=steps, size=size, batch=batch),
        VisConfig(layers=(spec.layer(vis_layer),), units=units_per_layer([spec.layer(vis_layer)], vis_units, explicit=True),
                  techniques=tuple(t for t in TECHNIQUES if t != "pixels"), steps=steps, size=size, batch=batch),
        VisConfig(layers=(logits,), units={logits.name: parse_units(str(vis_class), logits.channels)},
                  techniques=("channel", "pixels"), steps=steps, size=size, batch=batch),
    ]
    with _stage(spec, weights, device, data, database_url, create=True) as stage:
        store, net, digest, target = stage.store, stage.net, stage.weights_sha256, stage.device
        added = catalog(store, spec)
        typer.echo(f"catalog: {added.layers_added} layers, {added.units_added} units added")
        examples = run_examples(store, spec, net, digest, root, ExamplesConfig(layers=spec.layers, batch_size=batch * 2),
                                target)
        typer.echo("examples: " + ("already stored" if examples.reused else f"{examples.examples} stored"))
        for failure in examples.skipped:
            typer.echo(f"warning: skipped {failure}", err=True)
        circuits = run_circuits(store, spec, net.cpu(), digest, spec.layers)
        net = net.to(target)
        typer.echo(f"circuits: {circuits.edges} edges written, {circuits.pairs_reused} layer pairs already stored")
        for config in renders:
            rendered = run_vis(store, spec, net, digest, config, target)
            typer.echo(f"vis: {rendered.rendered} rendered, {rendered.skipped} already stored")
        stale = stale_configs(store, spec)
        for config in stale:
            run_vis(store, spec, net, digest, config, target)
        if stale:
            typer.echo(f"vis: {sum(len(r) for c in stale for r in c.units.values())} images of an older algorithm rendered again")


def _yield_cpu() -> str:
    """Run this process (and the threads it starts later) only when the CPU is otherwise idle."""
    import os

    if hasattr(os, "sched_setscheduler"):
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            return "SCHED_IDLE"
        except OSError:
            pass
    os.nice(19)
    return "nice 19"


@cli.command()
def worker(
    model: ModelOption = DEFAULT_MODEL,
    fill: Annotated[bool, typer.Option("--fill", help="When no request waits, render every unit still missing.")] = False,
    fill_batch: Annotated[int, typer.Option(min=1, help="Units rendered together by the fill.")] = 4,
    steps: Annotated[int, typer.Option(help="Steps of on-demand renders (the main job's recipe).")] = ON_DEMAND.steps,
    early_steps: Annotated[int, typer.Option(help="Steps for the stem's conv layers.")] = ON_DEMAND.early_steps,
    size: Annotated[int, typer.Option(help="Image side of on-demand renders.")] = ON_DEMAND.size,
    until_idle: Annotated[bool, typer.Option("--until-idle", help="Exit when the queue (and, with --fill, the model) is done.")] = False,
    background: Annotated[bool, typer.Option(
        "--background/--foreground",
        help="Run at idle CPU priority (Linux SCHED_IDLE, else nice 19): the worker yields the CPU to the web "
             "server beside it.")] = True,
    device: DeviceOption = "auto",
    weights: WeightsOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Render units and probe images that people ask for in the browser; with --fill, fill in the rest."""
    import logging
    import signal

    from app.jobs import JobQueue
    from precompute.recipes import Defaults
    from precompute.worker import Worker

    if background:
        _yield_cpu()  # before torch is imported and starts its threads: they inherit it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("huey").setLevel(logging.WARNING)
    spec = get_model(model)
    with _stage(spec, weights, device, data, database_url) as stage:
        queue = JobQueue.for_store(stage.store.settings)
        running = Worker(stage.store, queue, spec, stage.net, stage.weights_sha256, stage.device, fill=fill,
                         fill_batch=fill_batch, defaults=Defaults(steps, early_steps, size))
        signal.signal(signal.SIGTERM, lambda *_: running.stop())
        typer.echo(f"worker {running.name}: {spec.name} on {stage.device}, queue {queue.location}"
                   f"{', filling' if fill else ''}")
        try:
            stats = running.run(until_idle=until_idle)
        except KeyboardInterrupt:
            stats = running.stats
    typer.echo(f"worker: {stats.jobs} jobs, {stats.filled} units filled")


@model_cli.command("eval")
def model_eval(
    model: ModelOption = DEFAULT_MODEL,
    weights: WeightsOption = None,
    images: ImagesOption = None,
    batch: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 50,
    workers: Annotated[int, typer.Option(min=0, help="Image-decoding processes.")] = 1,
) -> None:
    """Classify a class-per-folder image set and print top-1/top-5 accuracy as one JSON line."""
    from precompute.evaluate import evaluate
    from precompute.images import locate_images
    from precompute.weight_files import locate
    from precompute.weights import load_network

    spec = get_model(model)
    net, _ = load_network(spec, locate(spec, weights))
    accuracy = evaluate(net, spec, locate_images(images), batch_size=batch, workers=workers)
    typer.echo(json.dumps(accuracy.as_dict()))


def main() -> None:
    try:
        cli()
    except MicroscopeError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
