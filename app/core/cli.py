"""The ``microscope`` command's torch-free half: serving, reading and maintaining a store.

``serve``, ``info``, ``export``, ``import`` and ``gc`` live here, with the
server, so the web image needs neither torch nor the precompute package.
Commands that run a model (``precompute ...``, ``worker``, ``model ...``)
register themselves through the ``microscope.commands`` entry point group
(``precompute.cli:register``) where the precompute package is installed.
Every user error (`MicroscopeError`) ends in one line on stderr and exit
status 2; the store is left as it was.
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Optional

import typer

from app.core.errors import MicroscopeError
from app.core.settings import Settings, SettingsError
from app.core.store import Store

cli = typer.Typer(
    help="Microscope: a self-hostable neuron microscope for vision networks.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

@cli.callback()
def options(
    blobs: Annotated[Optional[str], typer.Option(
        "--blobs", envvar="MICROSCOPE_BLOBS",
        help="Keep blobs in S3-compatible object storage (s3://bucket/prefix; credentials and endpoint from the "
             "AWS_* environment) instead of the store directory's blobs/ folder.")] = None,
) -> None:
    """Microscope: a self-hostable neuron microscope for vision networks."""
    import os

    if blobs:  # every command (and the processes they start: servers, workers) reads it from here
        os.environ["MICROSCOPE_BLOBS"] = blobs


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

@cli.command()
def info(data: DataOption = None, database_url: DatabaseOption = None,
         as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False) -> None:
    """Print what a store holds, per model, layer and technique."""
    from dataclasses import asdict

    from app.core.store.summary import coverage

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
        for stage, why in model.skips.items():
            typer.echo(f"  no {stage}: {why}")
        skipped = [(layer.name, stage, why) for layer in model.layers for stage, why in layer.skips.items()]
        if skipped:
            typer.echo("  left out of a layer:")
            for name, stage, why in skipped:
                typer.echo(f"    {name:<24} {stage:<10} {why}")
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
    token_file: Annotated[Optional[Path], typer.Option(
        "--token-file", help="A file holding the token every POST must carry (or MICROSCOPE_TOKEN).")] = None,
) -> None:
    """Serve a store read-only in the browser and as JSON (never runs a model)."""
    import os

    import uvicorn

    token = token_file.read_text(encoding="utf-8").strip() if token_file is not None else None
    if token_file is not None and not token:
        raise SettingsError(f"--token-file {token_file} is empty")
    settings = Settings.load(data, database_url, host=host, token=token)
    Store.open(settings, readonly=True).close()  # fail now, in one line, on a missing or newer store
    os.environ.update(settings.environment())  # uvicorn's factory (and its worker processes) read them back
    typer.echo(f"serving {settings.data_dir.name} at http://{host}:{port}/ (live side: {settings.live_policy}"
               f"{', token required' if settings.token else ''})")
    uvicorn.run("app.main:create_app", factory=True, host=host, port=port, workers=workers,
                log_level="warning", access_log=False)


@cli.command("export")
def export(
    bundle: Annotated[Path, typer.Argument(help="The archive to write (a .tar).")],
    data: DataOption = None,
    database_url: DatabaseOption = None,
    probes: Annotated[bool, typer.Option(
        "--probes", help="Include users' probes (their uploaded images' results); left out by default.")] = False,
) -> None:
    """Write the whole store (rows and every blob they point at) as one archive, without users' probes."""
    from app.core.store.bundle import export_bundle

    with Store.open(Settings.load(data, database_url), readonly=True) as store:
        summary = export_bundle(store, bundle, probes=probes)
    typer.echo(f"exported {sum(summary.rows.values())} rows and {summary.blobs} blobs to {summary.path}"
               + ("" if probes else " (users' probes left out: --probes includes them)"))


@cli.command("import")
def import_(
    bundle: Annotated[Path, typer.Argument(help="An archive written by `microscope export`.")],
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Read an archive into an empty (or new) store, checking every blob against its key."""
    from app.core.store.bundle import import_bundle

    summary = import_bundle(bundle, Settings.load(data, database_url))
    typer.echo(f"imported {sum(summary.rows.values())} rows and {summary.blobs} blobs from {summary.path}")


@cli.command()
def gc(
    data: DataOption = None,
    database_url: DatabaseOption = None,
    probes_older_than: Annotated[Optional[float], typer.Option(
        "--probes-older-than", min=0, help="Also remove users' probes made more than DAYS days ago.",
        metavar="DAYS")] = None,
    grace: Annotated[float, typer.Option(
        help="Leave blobs and temporary files written in the last SECONDS (a run in progress may own them).",
        min=0, metavar="SECONDS")] = 3600.0,
    force: Annotated[bool, typer.Option("--force", help="Run even while a worker's heartbeat is alive.")] = False,
) -> None:
    """Remove blobs no row points at and files half-written by interrupted runs (older than the grace period)."""
    from datetime import UTC, datetime

    from app.core.jobs import JobQueue
    from app.core.store.maintenance import collect_garbage, remove_probes

    settings = Settings.load(data, database_url)
    if not force:
        alive = JobQueue.for_store(settings).live_workers()
        if alive:
            raise MicroscopeError(f"{len(alive)} worker(s) are running on this store ({alive[0].worker}): "
                                  "stop them first, or pass --force (blobs younger than --grace stay either way)")
    with Store.open(settings) as store:
        if probes_older_than is not None:
            removed = remove_probes(store, probes_older_than, datetime.now(UTC).replace(tzinfo=None))
            typer.echo(f"gc: removed {removed} probes made more than {probes_older_than:g} days ago")
        collected = collect_garbage(store, grace)
    typer.echo(f"gc: removed {collected.blobs_removed} unreferenced blobs and {collected.partial_files_removed} "
               f"partial files; {collected.missing} referenced blobs missing")
    if collected.missing:
        raise typer.Exit(1)


def with_plugins() -> typer.Typer:
    """The command with every installed plugin's commands registered (the precompute package's, if present)."""
    for entry in entry_points(group="microscope.commands"):
        try:
            register = entry.load()
        except ImportError:  # a web image: the package's metadata names precompute, its code is not there
            continue
        register(cli)
    return cli


def main(command: typer.Typer | None = None) -> None:
    try:
        (command or with_plugins())()
    except MicroscopeError as error:
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
