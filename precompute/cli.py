"""The ``microscope`` commands that run a model: the precompute stages, the worker and model checks.

They register onto the torch-free command in `app.core.cli` (entry point group
``microscope.commands``); torch is imported only inside each command, so
``microscope --help`` stays fast.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from app.core.cli import DatabaseOption, DataOption
from app.core.cli import main as run_command
from app.core.errors import MicroscopeError
from app.core.settings import Settings
from app.core.stimuli import TUNING_FAMILIES
from app.core.store import Store
from app.core.zoo import DEFAULT_MODEL
from precompute.running.recipes import FIRST_LOOK, ON_DEMAND, Defaults


if TYPE_CHECKING:
    from precompute.running.cluster import Runner

commands = typer.Typer()
precompute_cli = typer.Typer(help="Offline stages that fill the store (need torch).", no_args_is_help=True)
model_cli = typer.Typer(help="Check a model and its weights; seed weights to try one.", no_args_is_help=True)


def register(cli: typer.Typer) -> None:
    """Add these commands to the ``microscope`` command (the entry point's hook)."""
    cli.add_typer(precompute_cli, name="precompute")
    cli.add_typer(model_cli, name="model")
    cli.registered_commands.extend(commands.registered_commands)


ModelOption = Annotated[str, typer.Option(
    "--model", envvar="MICROSCOPE_MODEL",
    help="A registry model (`microscope models` lists them; default inceptionv1_caffe) or package.module:factory.")]
WeightsOption = Annotated[
    Optional[Path],
    typer.Option("--weights", envvar="MICROSCOPE_WEIGHTS",
                 help="The model's weights: a folder of raw Caffe files, a .tflite, a state dict, inceptionv1's "
                      ".pth/.pb/.zip (default: ../shared/models, else the pinned download, checked)."),
]
def _trust_pickle(value: bool) -> bool:
    if value:  # read where the weights are loaded (`precompute.models.traced.TRUST_PICKLE`), in this process
        os.environ["MICROSCOPE_TRUST_PICKLE"] = "1"
    return value


TrustPickleOption = Annotated[
    bool,
    typer.Option("--trust-pickle", envvar="MICROSCOPE_TRUST_PICKLE", callback=_trust_pickle,
                 help="Load --weights that are a whole pickled module (torch.save(model)): unpickling runs any code "
                      "the file holds, so only for a file you made. A state dict needs no trust."),
]
NamesOption = Annotated[
    Optional[Path],
    typer.Option("--names", envvar="MICROSCOPE_NAMES",
                 help="JSON file naming a traced model and its layers, and its input convention (docs/your-own-model.md)."),
]
ImagesOption = Annotated[
    Optional[Path],
    typer.Option("--images", envvar="MICROSCOPE_IMAGES",
                 help="Image folder, WebDataset .tar shard, or folder of shards (default: ../shared/data/imagenet-sample)."),
]
LayersOption = Annotated[str, typer.Option("--layers", help="'all', 'main' or comma-separated layer names.")]
DeviceOption = Annotated[str, typer.Option("--device", help="'auto' (a GPU when there is one), 'cpu', 'cuda', 'cuda:1'...")]
WorkersOption = Annotated[int, typer.Option("--workers", min=0, help="Image-decoding processes.")]
ShardOption = Annotated[
    Optional[str],
    typer.Option("--shard", help="i/n: do the i-th of n deterministic parts (n processes fill one store together)."),
]
RayOption = Annotated[
    Optional[str],
    typer.Option("--ray", envvar="MICROSCOPE_RAY",
                 help="Run the stage's shards as tasks on this Ray cluster: 'auto' (the one `ray start` made here), "
                      "host:6379 or ray://host:10001. Needs the ray extra."),
]
TasksOption = Annotated[int, typer.Option(
    "--tasks", min=0, help="With --ray: tasks per stage (0: one per CPU of the cluster, or per GPU for CUDA).")]


def _load(model: str, weights: Path | None, names: Path | None) -> Any:
    """The checked network of ``model``; a note on weights that are not the published ones goes to stderr."""
    from precompute.models import load

    loaded = load(model, weights, names)
    if loaded.note:
        typer.echo(f"note: {loaded.note}", err=True)
    return loaded


@contextmanager
def _stage(model: str, weights: Path | None, names: Path | None, device: str, data: Path | None,
           database_url: str | None, create: bool = False, ray: str | None = None, tasks: int = 0,
           shard: str | None = None) -> Iterator[Runner]:
    """The stage context (an open store, the checked network on its device, its shard) and where its stages run.

    With ``ray``, the model is checked here on the CPU (the driver needs no GPU) and the stages run on the
    cluster, each task opening the same model and store.
    """
    from precompute.running.cluster import Cluster, Runner, source
    from precompute.running.devices import pick_device
    from precompute.running.selection import parse_shard
    from precompute.running.context import Stage

    if ray and shard:
        raise MicroscopeError("--ray runs every shard itself: leave out --shard")
    loaded = _load(model, weights, names)
    with Store.open(Settings.load(data, database_url), create=create) as store:
        target = pick_device("cpu" if ray else device)
        from precompute.models.derived import with_factors

        net = with_factors(store, loaded.net.to(target), target)  # the store's derived layers, as layers
        cluster = Cluster(ray, tasks) if ray else None
        where = source(model, weights, names, device, store.settings) if ray else None
        yield Runner(Stage(store, net, loaded.weights_sha256, target, parse_shard(shard)), cluster, where)


@precompute_cli.command("catalog")
def precompute_catalog(model: ModelOption = DEFAULT_MODEL, shard: ShardOption = None, weights: WeightsOption = None,
                       trust_pickle: TrustPickleOption = False,
                       names: NamesOption = None, data: DataOption = None, database_url: DatabaseOption = None) -> None:
    """Write the model, layer and unit rows (with class names and geometry); idempotent."""
    from precompute.stages.catalog import catalog
    from precompute.models import catalogued
    from precompute.running.selection import parse_shard

    part = parse_shard(shard)
    spec, digest = catalogued(model, weights, names)
    with Store.open(Settings.load(data, database_url), create=True) as store:
        result = catalog(store, spec, shard=part, weights_sha256=digest)
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
    ray: RayOption = None,
    tasks: TasksOption = 0,
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    names: NamesOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Top and bottom dataset examples of every unit, in one resumable streaming pass."""
    from precompute.stages.examples import ExamplesConfig
    from precompute.running.images import locate_images
    from precompute.running.selection import parse_layers

    root = locate_images(images)
    with _stage(model, weights, names, device, data, database_url, ray=ray, tasks=tasks, shard=shard) as runner:
        stage = runner.stage
        config = ExamplesConfig(layers=tuple(parse_layers(stage.spec, layers)), k=k, batch_size=batch,
                                workers=workers, checkpoint_every=checkpoint_every)
        result = runner.examples(root, config)
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


@precompute_cli.command("labels")
def precompute_labels(
    model: ModelOption = DEFAULT_MODEL,
    layers: LayersOption = "all",
    images: ImagesOption = None,
    shard: ShardOption = None,
    names: NamesOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Concept labels of every unit from the ImageNet classes of its top examples (runs no network)."""
    from precompute.running.images import locate_images
    from precompute.stages.labels import run_labels
    from precompute.models import build
    from precompute.running.selection import parse_layers, parse_shard

    root = locate_images(images)
    spec = build(model, names).spec  # the layers only: labels need no weights
    with Store.open(Settings.load(data, database_url)) as store:
        result = run_labels(store, spec, root, parse_layers(spec, layers), parse_shard(shard))
    typer.echo(_labels_line(result))


def _labels_line(result: Any) -> str:
    if not result.layers_labelled:
        return f"labels: already computed for {result.layers_reused} layers with this recipe"
    return (f"labels: {result.layers_labelled} layers labelled ({result.layers_reused} already stored): "
            f"{result.units_labelled} units with a clear concept, {result.units_unclear} without; "
            f"{len(result.concepts)} distinct concepts")


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
    ray: RayOption = None,
    tasks: TasksOption = 0,
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    names: NamesOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Feature visualizations of the chosen units, batched; skips what is stored with the same recipe."""
    from precompute.running.selection import parse_layers, units_per_layer
    from precompute.stages.vis import VisConfig

    if precision not in ("auto", "fp32", "bf16"):
        raise MicroscopeError(f"--precision {precision!r}: choose auto, fp32 or bf16")
    with _stage(model, weights, names, device, data, database_url, ray=ray, tasks=tasks, shard=shard) as runner:
        stage = runner.stage
        chosen = parse_layers(stage.spec, layers)
        config = VisConfig(
            layers=tuple(chosen), units=units_per_layer(chosen, units, explicit=layers not in ("all", "main")),
            techniques=tuple(t.strip() for t in techniques.split(",") if t.strip()), steps=steps, size=size,
            batch=batch, seed=seed, precision=precision,  # type: ignore[arg-type]
        )
        result = runner.vis(config)
    typer.echo(f"vis: {result.rendered} images rendered, {result.skipped} already stored with this recipe")


@precompute_cli.command("dream")
def precompute_dream(
    model: ModelOption = DEFAULT_MODEL,
    layers: LayersOption = "main",
    steps: Annotated[int, typer.Option(help="Optimization steps (Lucid: 512).")] = ON_DEMAND.steps,
    size: Annotated[int, typer.Option(help="Image side in pixels.")] = ON_DEMAND.size,
    seed: Annotated[int, typer.Option(help="Base seed; each layer's seed derives from it and the layer.")] = 0,
    device: DeviceOption = "auto",
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    names: NamesOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """DeepDream of each layer (Microscope's deep_dream): one render of the whole layer's squared activation."""
    from precompute.stages.dream import run_deep_dream
    from precompute.running.selection import parse_layers
    from precompute.stages.vis import VisConfig

    with _stage(model, weights, names, device, data, database_url) as runner:
        stage = runner.stage
        chosen = tuple(parse_layers(stage.spec, layers))
        config = VisConfig(layers=chosen, units={}, techniques=("channel",), steps=steps, size=size, batch=1, seed=seed)
        result = run_deep_dream(stage, chosen, config)
    typer.echo(f"deep dream: {result.rendered} layers rendered, {result.skipped} already stored with this recipe")


@precompute_cli.command("tuning")
def precompute_tuning(
    model: ModelOption = DEFAULT_MODEL,
    layers: LayersOption = "main",
    families: Annotated[str, typer.Option(help="Comma-separated: lines, edges, curves, gratings, colours, joint.")] = ",".join(TUNING_FAMILIES),
    images: ImagesOption = None,
    joint_examples: Annotated[int, typer.Option(min=1, help="Top examples rotated per unit (joint tuning).")] = 3,
    joint_everywhere: Annotated[bool, typer.Option(
        "--joint-everywhere",
        help="Joint tuning on every layer, also where the receptive field is (nearly) the whole input: there the "
             "crop is the photo, and it takes 24 full forward passes per unit.")] = False,
    batch: Annotated[int, typer.Option(min=1, help="Stimuli per forward pass.")] = 64,
    device: DeviceOption = "auto",
    shard: ShardOption = None,
    ray: RayOption = None,
    tasks: TasksOption = 0,
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    names: NamesOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Tuning curves of every unit: responses to lines, edges, curves, gratings and colours drawn on its receptive
    field, and to its top example rotated (joint tuning); forward passes only, resumable by layer."""
    from precompute.running.selection import parse_layers
    from precompute.stages.tuning import TuningConfig

    root = _joint_images(images, families)
    with _stage(model, weights, names, device, data, database_url, ray=ray, tasks=tasks, shard=shard) as runner:
        config = TuningConfig(layers=tuple(parse_layers(runner.stage.spec, layers)),
                              families=tuple(f.strip() for f in families.split(",") if f.strip()), batch=batch,
                              joint_examples=joint_examples, images=root, joint_everywhere=joint_everywhere)
        result = runner.tuning(config)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(_tuning_line(result))


def _joint_images(images: Path | None, families: str = "joint") -> str | None:
    """The image folder joint tuning reads top examples from (None: the store's latest examples dataset)."""
    if images is None or "joint" not in families:
        return None
    from precompute.running.images import locate_images

    return str(locate_images(images).resolve())


def _tuning_line(result: Any) -> str:
    if not result.layers_tuned:
        return f"tuning: already computed for {result.layers_reused} layers with this recipe"
    slowest = sorted(result.seconds.items(), key=lambda item: -item[1])[:3]
    return (f"tuning: {result.units} units of {result.layers_tuned} layers in {sum(result.seconds.values()):.0f} s "
            f"({result.layers_reused} already stored; slowest: "
            + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in slowest) + ")")


@precompute_cli.command("factors")
def precompute_factors(
    model: ModelOption = DEFAULT_MODEL,
    layers: Annotated[str, typer.Option("--layers", help="Comma-separated layers (default: mixed3b and mixed4c where "
                                        "the model has them, else two main layers a third and two thirds in).")] = "",
    method: Annotated[str, typer.Option(help="nmf (Building Blocks' groups) or sae (a top-k sparse dictionary).")] = "nmf",
    groups: Annotated[int, typer.Option(min=1, help="NMF: directions per layer.")] = 32,
    expansion: Annotated[int, typer.Option(min=1, help="SAE: dictionary features per unit of the layer.")] = 8,
    k: Annotated[int, typer.Option("--k", min=1, help="SAE: features active per position.")] = 32,
    samples: Annotated[int, typer.Option(min=100, help="Positions sampled over the images.")] = 200_000,
    steps: Annotated[int, typer.Option(min=1, help="SAE: training steps.")] = 3000,
    accuracy: Annotated[bool, typer.Option("--accuracy/--no-accuracy", help=(
        "Score the network with the layer replaced by its reconstruction (two passes over a labelled dataset)."))] = True,
    images: ImagesOption = None,
    device: DeviceOption = "auto",
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    names: NamesOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Directions as units: NMF groups or a sparse dictionary of each layer's activations over the images, stored as
    a derived layer (``mixed4c_nmf``, ``mixed3b_sae``) with its figures, then its examples and labels; resumable."""
    from precompute.stages.factors import FactorsConfig, default_layers, run_factors
    from precompute.running.images import locate_images
    from precompute.running.selection import parse_layers

    root = locate_images(images)
    with _stage(model, weights, names, device, data, database_url) as runner:
        stage = runner.stage
        chosen = tuple(parse_layers(stage.spec, layers)) if layers else tuple(default_layers(stage.spec))
        config = FactorsConfig(layers=chosen, method=method, groups=groups, expansion=expansion, k=k, samples=samples,
                               steps=steps, accuracy=accuracy)
        result = run_factors(stage, root, config)
    for note in result.notes:
        typer.echo(f"note: {note}", err=True)
    for name, figures in result.figures.items():
        shown = ", ".join(f"{key} {value}" for key, value in figures.items())
        typer.echo(f"{name}: {shown} ({result.seconds[name]:.0f} s)")
    typer.echo(f"factors: {result.layers_factored} layers factored, {result.layers_reused} already stored")


@precompute_cli.command("modules")
def precompute_modules(
    model: ModelOption = DEFAULT_MODEL,
    layers: LayersOption = "main",
    modules: Annotated[int, typer.Option(min=2, help="Clusters per graph.")] = 8,
    shuffles: Annotated[int, typer.Option(min=1, help="Shuffles of the weights the clustering is compared with.")] = 100,
    network: Annotated[bool, typer.Option("--network/--no-network", help="Also the whole network as one graph.")] = True,
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    names: NamesOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Modules: the units of each pair of adjacent main layers, and of the whole network, clustered by the weights
    between them (Filan et al.'s protocol: spectral clustering against each layer's weights shuffled, and against a
    smooth network with no modules); resumable by pair."""
    from precompute.stages.modules import ModulesConfig, run_modules, run_network_modules
    from precompute.running.selection import parse_layers

    with _stage(model, weights, names, "cpu", data, database_url) as runner:
        stage = runner.stage
        config = ModulesConfig(layers=tuple(parse_layers(stage.spec, layers)), modules=modules, shuffles=shuffles)
        result = run_modules(stage, config)
        whole = run_network_modules(stage, config) if network else None
    for name, figures in [*result.figures.items(), *([("network", whole)] if whole else [])]:
        typer.echo(f"{name}: normalized cut {figures['ncut']}, shuffled {figures['shuffled_mean']} ± "
                   f"{figures['shuffled_std']} (z {figures['z']}), shuffles that cut as low "
                   f"{figures['better']:.0%}, smooth control {figures['control_ncut']}: {figures['verdict']}")
    typer.echo(f"modules: {result.pairs_clustered} layer pairs clustered, {result.pairs_reused} already stored "
               f"({result.seconds:.0f} s)")


@precompute_cli.command("sanity")
def precompute_sanity(
    model: ModelOption = DEFAULT_MODEL,
    count: Annotated[int, typer.Option("--count", min=2, help="Images the maps are compared on.")] = 50,
    methods: Annotated[str, typer.Option(help="Comma-separated: gradient, integrated_gradients, grad_cam and the negative "
                                              "controls guided_backprop, guided_grad_cam.")] = (
        "gradient,integrated_gradients,grad_cam,guided_backprop,guided_grad_cam"),
    targets: Annotated[str, typer.Option(help="Comma-separated kinds of target: class (each image's top class), unit "
                                              "(its deepest layer's most active unit).")] = "class",
    images: ImagesOption = None,
    device: DeviceOption = "auto",
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    names: NamesOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """The attribution maps' sanity check: the cascading model-randomization test (Adebayo et al.), each method's maps
    on the real network against copies re-initialized from the top layer down, with guided backprop and guided
    Grad-CAM as negative controls; stored per model, method and kind of target."""
    from precompute.running.images import locate_images
    from precompute.stages.sanity import SanityConfig, run_sanity

    root = locate_images(images)
    config = SanityConfig(images=count, methods=tuple(m.strip() for m in methods.split(",") if m.strip()),
                          targets=tuple(t.strip() for t in targets.split(",") if t.strip()))
    with _stage(model, weights, names, device, data, database_url) as runner:
        result = run_sanity(runner.stage, root, config)
    for note in result.skipped:
        typer.echo(f"skipped {note}", err=True)
    for (method, kind), steps in result.figures.items():
        typer.echo(f"{method} ({kind}): " + ", ".join(
            f"{name} {'degenerate' if rho is None else f'{rho:.2f}'}{f' ({bad} degenerate)' if bad else ''}"
            for name, rho, bad in steps))
    typer.echo(f"sanity: {result.methods_tested} methods tested, {result.methods_reused} already stored "
               f"({result.seconds:.0f} s)")


@precompute_cli.command("match")
def precompute_match(
    models: Annotated[str, typer.Option("--models", help="Two models, comma-separated (both catalogued in the store).")],
    weights: Annotated[str, typer.Option("--weights", help="Their weights, comma-separated in the same order (empty: "
                                         "the default place).")] = "",
    names: Annotated[str, typer.Option("--names", help="Their names files, comma-separated (empty: none).")] = "",
    images: ImagesOption = None,
    device: DeviceOption = "auto",
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Universality: each unit's 5 nearest units in the other model, by the correlation of their pooled activations
    over the same images (both ways)."""
    from precompute.running.devices import pick_device
    from precompute.running.images import locate_images
    from precompute.stages.match import run_match

    chosen = [name.strip() for name in models.split(",") if name.strip()]
    if len(chosen) != 2:
        raise MicroscopeError(f"--models takes two models, not {models!r}")
    paths = (weights.split(",") + ["", ""])[:2]
    described = (names.split(",") + ["", ""])[:2]
    root = locate_images(images)
    loaded = [_load(model, Path(path) if path else None, Path(name) if name else None)
              for model, path, name in zip(chosen, paths, described)]
    target = pick_device(device)
    with Store.open(Settings.load(data, database_url)) as store:
        result = run_match(store, (loaded[0].net.to(target), loaded[1].net.to(target)),
                           (loaded[0].weights_sha256, loaded[1].weights_sha256), root, target)
    shown = ", ".join(f"{layer} {fraction:.0%}" for layer, fraction in result.matched.items())
    typer.echo(f"match: {result.matches} matches of {result.units} units stored ({result.seconds:.0f} s); units of "
               f"{loaded[0].net.spec.name} with a match of correlation >= 0.5: {shown}")


@precompute_cli.command("circuits")
def precompute_circuits(
    model: ModelOption = DEFAULT_MODEL,
    layers: LayersOption = "all",
    shard: ShardOption = None,
    ray: RayOption = None,
    tasks: TasksOption = 0,
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    names: NamesOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Strongest input and output weights of every unit (expanded across blocks); resumable by layer pair."""
    from precompute.running.selection import parse_layers

    with _stage(model, weights, names, "cpu", data, database_url, ray=ray, tasks=tasks, shard=shard) as runner:
        stage = runner.stage
        result = runner.circuits(parse_layers(stage.spec, layers))
    typer.echo(f"circuits: {result.edges} edges in {result.pairs_written} layer pairs written, "
               f"{result.pairs_reused} already stored")


@precompute_cli.command("all")
def precompute_all(
    model: ModelOption = DEFAULT_MODEL,
    images: ImagesOption = None,
    vis_units: Annotated[str, typer.Option(help="Units of every main layer to render (channel technique).")] = "0:4",
    vis_layer: Annotated[str, typer.Option(
        help="The layer whose units get every technique (default: mixed4c where there is one, else the middle "
             "main layer).")] = "",
    vis_class: Annotated[int, typer.Option(help="The class logit rendered in the Fourier and the pixel basis.")] = 488,
    steps: Annotated[int, typer.Option(help="Optimization steps of the default renders.")] = ON_DEMAND.steps,
    early_steps: Annotated[int, typer.Option(
        help="Steps for the conv layers before the first block: cheap to render, and slower to converge.")
    ] = ON_DEMAND.early_steps,
    size: Annotated[int, typer.Option(help="Image side of the default renders.")] = ON_DEMAND.size,
    batch: Annotated[int, typer.Option(help="Images per batch (examples and renders).")] = 16,
    tuning: Annotated[bool, typer.Option(
        "--tuning/--no-tuning",
        help="Tuning curves of every main layer's units (scripts/main leaves them to its worker: --no-tuning).")] = True,
    device: DeviceOption = "auto",
    ray: RayOption = None,
    tasks: TasksOption = 0,
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    names: NamesOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """The main job in one process (or on a Ray cluster): catalog, examples, labels and circuits of every unit, a default
    set of renders, a DeepDream and the tuning curves of every main layer.

    Renders the channel technique for ``--vis-units`` of every main layer,
    every technique for those units of ``--vis-layer``, and the class logit
    ``--vis-class`` (488, "chain") in the Fourier and the pixel basis, with
    fewer steps than Lucid's 512 so that the job fits a CPU in minutes (the
    stem's conv layers, cheap to render, get ``--early-steps``; each
    image's recipe is stored and shown on its page). Everything already
    stored with the same recipe is skipped, so a rerun takes seconds; images
    made by an older algorithm are rendered again with their own settings.
    """
    from app.core.zoo.skips import model_skips
    from precompute.stages.catalog import catalog
    from precompute.stages.examples import ExamplesConfig
    from precompute.running.images import locate_images
    from precompute.stages.dream import run_deep_dream
    from precompute.stages.labels import run_labels
    from precompute.stages.tuning import TuningConfig
    from precompute.stages.vis import VisConfig, stale_configs

    root = locate_images(images)
    with _stage(model, weights, names, device, data, database_url, create=True, ray=ray, tasks=tasks) as runner:
        stage = runner.stage
        spec = stage.spec
        renders = _default_renders(spec, spec.logits, vis_layer, vis_units, vis_class,
                                   Defaults(steps, early_steps, size), batch)
        added = catalog(stage.store, spec, weights_sha256=stage.weights_sha256)
        typer.echo(f"catalog: {added.layers_added} layers, {added.units_added} units added")
        trained = tuple(layer for layer in spec.layers if not layer.is_derived)  # derived ones: `precompute factors`
        examples = runner.examples(root, ExamplesConfig(layers=trained, batch_size=batch * 2))
        typer.echo("examples: " + ("already stored" if examples.reused else f"{examples.examples} stored"))
        for failure in examples.skipped:
            typer.echo(f"warning: skipped {failure}", err=True)
        typer.echo(_labels_line(run_labels(stage.store, spec, root, trained)))
        circuits = runner.circuits(trained)
        typer.echo(f"circuits: {circuits.edges} edges written, {circuits.pairs_reused} layer pairs already stored")
        for config in renders:
            rendered = runner.vis(config)
            typer.echo(f"vis: {rendered.rendered} rendered, {rendered.skipped} already stored")
        main = tuple(layer for layer in spec.layers if layer.is_main)
        dream_config = VisConfig(layers=main, units={}, techniques=("channel",), steps=steps, size=size, batch=1)
        dreamt = run_deep_dream(stage, main, dream_config)
        typer.echo(f"deep dream: {dreamt.rendered} layers rendered, {dreamt.skipped} already stored")
        if tuning and "tuning" in model_skips(spec):
            typer.echo(f"tuning: left out ({model_skips(spec)['tuning']})")
        elif tuning:
            tuned = runner.tuning(TuningConfig(layers=main, images=str(root.resolve())))
            typer.echo(_tuning_line(tuned))
        stale = stale_configs(stage.store, spec)
        for config in stale:
            runner.vis(config)
        if stale:
            typer.echo(f"vis: {sum(len(r) for c in stale for r in c.units.values())} images of an older algorithm rendered again")


def _default_renders(spec: Any, logits: Any, vis_layer: str, vis_units: str, vis_class: int, defaults: Defaults,
                     batch: int) -> list[Any]:
    """The main job's renders: the channel technique for ``vis_units`` of every main layer (the stem's conv
    layers with more steps), every technique for those of the showcase layer, the class logit in both bases."""
    from precompute.running.selection import parse_units, units_per_layer
    from precompute.stages.vis import TECHNIQUES, VisConfig

    main = list(spec.main_layers)
    early = [layer for layer in main if defaults.is_early(layer, spec.input_size)]
    later = [layer for layer in main if not defaults.is_early(layer, spec.input_size)]
    showcase = spec.layer(vis_layer or _showcase_layer(spec))
    common = {"size": defaults.size, "batch": batch}
    return [
        VisConfig(layers=tuple(early), units=units_per_layer(early, vis_units, explicit=False),
                  techniques=("channel",), steps=defaults.early_steps, **common),
        VisConfig(layers=tuple(later), units=units_per_layer(later, vis_units, explicit=False),
                  techniques=("channel",), steps=defaults.steps, **common),
        VisConfig(layers=(showcase,), units=units_per_layer([showcase], vis_units, explicit=True),
                  techniques=tuple(t for t in TECHNIQUES if t != "pixels"), steps=defaults.steps, **common),
    ] + ([] if logits is None else [  # a backbone has no class to render
        VisConfig(layers=(logits,), units={logits.name: parse_units(str(min(vis_class, logits.channels - 1)),
                                                                    logits.channels)},
                  techniques=("channel", "pixels"), steps=defaults.steps, **common),
    ])


def _showcase_layer(spec: Any) -> str:
    names = [layer.name for layer in spec.main_layers if layer.kind not in ("linear",)]
    return "mixed4c" if "mixed4c" in names else names[len(names) // 2]


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


@commands.command()
def worker(
    model: ModelOption = DEFAULT_MODEL,
    fill: Annotated[bool, typer.Option("--fill", help="When no request waits, render every unit still missing.")] = False,
    fill_batch: Annotated[int, typer.Option(min=1, help="Units rendered together by the fill.")] = 4,
    first_look: Annotated[int, typer.Option(
        min=0, help="With --fill: the first this many units of every main layer are drawn before the tuning, the "
                    "sanity test and the factors (what a newcomer opens first); 0 draws none first.")] = FIRST_LOOK,
    tune: Annotated[bool, typer.Option(
        "--tune/--no-tune", help="With --fill: first the tuning curves of every main layer still without them.")] = True,
    factor: Annotated[bool, typer.Option(
        "--factor/--no-factor", help="With --fill: then NMF groups and a sparse dictionary of two layers (mixed3b and "
                                     "mixed4c where the model has them; `precompute factors`' defaults).")] = True,
    factor_steps: Annotated[int, typer.Option(min=1, help="Training steps of the worker's dictionaries.")] = 3000,
    sanity: Annotated[bool, typer.Option(
        "--sanity/--no-sanity", help="With --fill: after the tuning, the attribution maps' randomization test "
                                     "(`precompute sanity`) on --sanity-images of the dataset.")] = True,
    sanity_images: Annotated[int, typer.Option(min=2, help="Images of the worker's randomization test.")] = 20,
    steps: Annotated[int, typer.Option(help="Steps of on-demand renders (the main job's recipe).")] = ON_DEMAND.steps,
    early_steps: Annotated[int, typer.Option(help="Steps for the stem's conv layers (a receptive field of at most a tenth of the input side).")] = ON_DEMAND.early_steps,
    size: Annotated[int, typer.Option(help="Image side of on-demand renders.")] = ON_DEMAND.size,
    until_idle: Annotated[bool, typer.Option("--until-idle", help="Exit when the queue (and, with --fill, the model) is done.")] = False,
    background: Annotated[bool, typer.Option(
        "--background/--foreground",
        help="Run at idle CPU priority (Linux SCHED_IDLE, else nice 19): the worker yields the CPU to the web "
             "server beside it.")] = True,
    device: DeviceOption = "auto",
    weights: WeightsOption = None,
    trust_pickle: TrustPickleOption = False,
    names: NamesOption = None,
    data: DataOption = None,
    database_url: DatabaseOption = None,
) -> None:
    """Render units and probe images that people ask for in the browser; with --fill, fill in the rest."""
    import logging
    import signal

    from app.core.jobs import JobQueue
    from precompute.running.worker import Worker

    if background:
        _yield_cpu()  # before torch is imported and starts its threads: they inherit it
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("huey").setLevel(logging.WARNING)
    with _stage(model, weights, names, device, data, database_url) as runner:
        stage = runner.stage
        spec = stage.spec
        queue = JobQueue.for_store(stage.store.settings)
        running = Worker(stage.quiet(), queue, fill=fill, tune=tune, factor=factor, sanity=sanity,
                         sanity_images=sanity_images,
                         factor_settings={"steps": factor_steps},
                         fill_batch=fill_batch, first_look=first_look, defaults=Defaults(steps, early_steps, size))
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
    trust_pickle: TrustPickleOption = False,
    names: NamesOption = None,
    images: ImagesOption = None,
    batch: Annotated[int, typer.Option(min=1, help="Images per forward pass.")] = 50,
    workers: Annotated[int, typer.Option(min=0, help="Image-decoding processes.")] = 1,
) -> None:
    """Classify a class-per-folder image set and print top-1/top-5 accuracy as one JSON line."""
    from precompute.methods.evaluate import evaluate
    from precompute.running.images import locate_images
    net = _load(model, weights, names).net
    accuracy = evaluate(net, net.spec, locate_images(images), batch_size=batch, workers=workers)
    typer.echo(json.dumps(accuracy.as_dict()))


@model_cli.command("random-weights")
def model_random_weights(
    target: Annotated[Path, typer.Argument(help="State dict file to write (torch.save).")],
    model: ModelOption = "resnet50",
    seed: Annotated[int, typer.Option(help="Seed: the same file on every machine.")] = 0,
    names: NamesOption = None,
) -> None:
    """Write seeded random weights for a traced model: to try the pipeline where its real weights are out of reach."""
    import torch

    from precompute.models import seeded_state_dict
    from precompute.models.weight_files import file_sha256

    torch.save(seeded_state_dict(model, seed, names), target)
    typer.echo(f"{target}: seeded ({seed}) random weights for {model}, sha256 {file_sha256(target)}")


if __name__ == "__main__":
    from app.core.cli import cli

    register(cli)
    run_command(cli)
