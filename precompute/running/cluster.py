"""A stage's shards as tasks on a Ray cluster (``microscope precompute ... --ray ADDRESS``).

The stages are already split into deterministic shards that are resumable
and idempotent, so a cluster run is the shards as Ray tasks: each task opens
the model (once per worker process) and the store the driver names, and
runs its shard. Circuits and vis tasks write their own rows, as concurrent
``--shard`` processes do; an examples task returns its shard's exact
statistics to the driver instead of a checkpoint in a shared folder, and
the driver merges them and writes, so no node needs to see another's disk.

A task whose worker dies (killed, out of memory, node lost) is retried by
Ray, and so is one that fails with an unexpected error (a locked database, a
dropped connection, a decode worker killed); its rerun resumes from what the
store and its checkpoint hold, so the result equals one process's. An error
in the input (a bad image folder, a wrong weights file) is not retried: the
task returns it and the driver fails with its message.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import torch

from app.core.errors import MicroscopeError
from app.core.settings import Settings
from app.core.store import Store
from app.core.zoo import LayerSpec
from precompute.stages.circuits import CircuitsResult, run_circuits
from precompute.stages.examples import ExamplesConfig, ExamplesResult, examples_part, run_examples, write_examples
from precompute.models.base import Network
from precompute.models.derived import with_factors
from precompute.running.context import Stage
from precompute.stages.tuning import TuningConfig, TuningResult, run_tuning
from precompute.stages.vis import VisConfig, VisResult, run_vis

#: Retries of a task whose worker died or that hit a transient error.
RETRIES = 3
#: The driver's environment that tasks get too: where the store and the blobs are, their credentials, imports.
FORWARDED = ("MICROSCOPE_", "AWS_", "PYTHONPATH")


@dataclass(frozen=True)
class Source:
    """What a task opens: the model (as the driver named it) and the driver's store."""

    model: str
    weights: str | None
    names: str | None
    device: str
    settings: Settings


@dataclass(frozen=True)
class ExamplesWork:
    config: ExamplesConfig
    #: The image root, absolute (every node reads the same path).
    root: str


@dataclass(frozen=True)
class CircuitsWork:
    layers: tuple[str, ...]


#: A task's work: what one stage's shard is given.
Work = ExamplesWork | CircuitsWork | VisConfig | TuningConfig
#: What a task returns: a stage's result, or an examples part (serialized statistics; None when stored).
Part = CircuitsResult | VisResult | TuningResult | bytes | None


def _examples(stage: Stage, work: Work) -> Part:
    assert isinstance(work, ExamplesWork)
    return examples_part(stage, Path(work.root), work.config)


def _circuits(stage: Stage, work: Work) -> Part:
    assert isinstance(work, CircuitsWork)
    return run_circuits(stage, [stage.spec.layer(name) for name in work.layers])


def _vis(stage: Stage, work: Work) -> Part:
    assert isinstance(work, VisConfig)
    return run_vis(stage, work)


def _tuning(stage: Stage, work: Work) -> Part:
    assert isinstance(work, TuningConfig)
    return run_tuning(stage, work)


@dataclass(frozen=True)
class StageTask:
    """How a stage's shard runs in a task: the function, and whether it wants the GPU."""

    run: Callable[[Stage, Work], Part]
    gpu: bool


#: Every stage a cluster runs, by name: the one table the tasks dispatch from.
STAGES: dict[str, StageTask] = {
    "examples": StageTask(_examples, gpu=True),
    "circuits": StageTask(_circuits, gpu=False),  # weights only: the CPU
    "vis": StageTask(_vis, gpu=True),
    "tuning": StageTask(_tuning, gpu=True),
}


@dataclass(frozen=True)
class Task:
    source: Source
    #: A key of `STAGES`.
    stage: str
    work: Work
    shard: tuple[int, int]


@dataclass(frozen=True)
class Refused:
    """A task's input error (a `MicroscopeError`), returned rather than raised so that Ray does not retry it."""

    message: str


@cache
def _opened(model: str, weights: str | None, names: str | None, device: str) -> tuple[Network, str, torch.device]:
    """The checked network on its device, loaded once per worker process."""
    from precompute.running.devices import pick_device
    from precompute.models import load

    loaded = load(model, Path(weights) if weights else None, Path(names) if names else None)
    target = pick_device(device)
    return loaded.net.to(target), loaded.weights_sha256, target


def run_task(task: Task) -> Part | Refused:
    """One shard of one stage, in a Ray worker: what the driver collects (a result, an examples part, or why
    the input was refused)."""
    from precompute.running.runs import report_progress_to_driver

    report_progress_to_driver()
    try:
        return _run(task)
    except MicroscopeError as error:
        return Refused(str(error))


def _run(task: Task) -> Part:
    source, entry = task.source, STAGES[task.stage]
    net, digest, device = _opened(source.model, source.weights, source.names, source.device if entry.gpu else "cpu")
    with Store.open(source.settings) as store:
        return entry.run(Stage(store, with_factors(store, net, device), digest, device, task.shard, progress=True),
                         task.work)


@dataclass(frozen=True)
class Cluster:
    """A connection to a Ray cluster and how a task asks for resources there."""

    address: str
    #: Tasks per stage; 0: one per CPU (or GPU, for a CUDA device) of the cluster.
    tasks: int = 0

    def connect(self) -> None:
        try:
            import ray
        except ImportError as error:
            raise MicroscopeError("--ray needs Ray: pip install 'neuron-microscope[ray]'") from error
        if ray.is_initialized():
            return
        env = {name: value for name, value in os.environ.items() if name.startswith(FORWARDED)}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH")]))
        try:
            ray.init(address=self.address, runtime_env={"env_vars": env}, log_to_driver=True,
                     logging_level="WARNING")
        except (ConnectionError, RuntimeError, ValueError) as error:
            raise MicroscopeError(f"cannot reach the Ray cluster at {self.address!r}: {error}") from error

    def uses_gpu(self, device: str) -> bool:
        import ray

        return device.startswith("cuda") or (device == "auto" and ray.cluster_resources().get("GPU", 0) > 0)

    def count(self, gpu: bool) -> int:
        import ray

        if self.tasks:
            return self.tasks
        return max(1, int(ray.cluster_resources().get("GPU" if gpu else "CPU", 1)))

    def run(self, source: Source, stage: str, work: Work) -> list[Part]:
        """The stage's shards as tasks, results in shard order; a failure is raised with the task's message."""
        import ray

        self.connect()
        gpu = STAGES[stage].gpu and self.uses_gpu(source.device)
        count = self.count(gpu)
        remote = ray.remote(run_task).options(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=RETRIES,
                                              retry_exceptions=True)
        refs = [remote.remote(Task(source, stage, work, (index, count))) for index in range(count)]
        return _gather(refs, stage)


def _gather(refs: Sequence[object], stage: str) -> list[Part]:
    import ray
    from ray.exceptions import RayError, RayTaskError

    try:
        results = ray.get(list(refs))
    except RayError as error:  # failed or died more than RETRIES times, or the cluster went away
        for ref in refs:
            ray.cancel(ref, force=True)
        cause = error.cause if isinstance(error, RayTaskError) else error
        raise MicroscopeError(f"{stage} task failed {RETRIES + 1} times: {cause!r}") from error
    for result in results:
        if isinstance(result, Refused):
            raise MicroscopeError(f"{stage} task: {result.message}")
    return results


def source(model: str, weights: Path | None, names: Path | None, device: str, settings: Settings) -> Source:
    """A `Source` with absolute paths, so every worker (whatever its directory) opens the same files."""
    def absolute(path: Path | None) -> str | None:
        return str(path.resolve()) if path else None

    return Source(model, absolute(weights), absolute(names), device, replace(settings, data_dir=settings.data_dir.resolve()))


@dataclass(frozen=True)
class Runner:
    """The model-running stages, here in this process or as a cluster's tasks: the commands call these."""

    stage: Stage
    cluster: Cluster | None = None
    source: Source | None = None

    def _tasks(self, name: str, work: Work) -> list[Part] | None:
        """The shards' parts from the cluster, or None to run here."""
        if self.cluster is None or self.source is None:
            return None
        return self.cluster.run(self.source, name, work)

    def examples(self, root: Path, config: ExamplesConfig) -> ExamplesResult:
        parts = self._tasks("examples", ExamplesWork(config, str(root.resolve())))
        if parts is None:
            return run_examples(self.stage, root, config)
        return write_examples(self.stage, root, config, [part for part in parts if part is None or isinstance(part, bytes)])

    def circuits(self, layers: Sequence[LayerSpec]) -> CircuitsResult:
        results = self._tasks("circuits", CircuitsWork(tuple(layer.name for layer in layers)))
        if results is None:
            return run_circuits(self.stage, layers)
        done = [result for result in results if isinstance(result, CircuitsResult)]
        return CircuitsResult(*(sum(getattr(r, name) for r in done) for name in ("pairs_written", "pairs_reused", "edges")))

    def vis(self, config: VisConfig) -> VisResult:
        results = self._tasks("vis", config)
        if results is None:
            return run_vis(self.stage, config)
        done = [result for result in results if isinstance(result, VisResult)]
        return VisResult(sum(r.rendered for r in done), sum(r.skipped for r in done))

    def tuning(self, config: TuningConfig) -> TuningResult:
        results = self._tasks("tuning", config)
        if results is None:
            return run_tuning(self.stage, config)
        return TuningResult.total([result for result in results if isinstance(result, TuningResult)])
