"""``microscope worker``: takes the server's jobs and, with ``--fill``, renders what is still missing.

The worker holds the network in memory and writes into the store with the
precompute stages' own code and recipes: a unit rendered here is the unit
``precompute vis`` would render with the same settings (same recipe digest,
so the stage skips it). Jobs come from `app.core.jobs.JobQueue`, most urgent
first; a person's request waits at most a few optimization steps of a fill
batch, because the fill's renders serve waiting requests between steps.

Killed at any moment, the worker loses at most what it had in flight: rows
are written in one transaction after their blobs (``microscope gc`` removes
blobs that no row got), and its jobs go back to the queue when the next
worker sees it gone.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from app.core.errors import MicroscopeError
from app.core.jobs import HEARTBEAT_SECONDS, MAX_ATTEMPTS, JobQueue
from app.core.store import Store
from app.core.store.maintenance import delete_probe
from app.core.store.schema import new_probe_id
from app.core.zoo import LayerSpec, ModelSpec
from app.core.zoo.skips import model_skips
from precompute.live.probe import attribute_probe, probe_contributions, render_caricature, render_group, run_probe
from precompute.running.recipes import FIRST_LOOK, ON_DEMAND, Defaults
from precompute.running.context import Stage
from precompute.stages.vis import missing_units, on_demand_config, recipe, run_vis

log = logging.getLogger("microscope.worker")

#: Seconds between looks at an empty queue (and between recoveries of dead workers' jobs).
IDLE_SECONDS = 0.1
RECOVER_SECONDS = 10.0
#: The tuning families of derived layers (their thousands of features skip joint tuning's rotated photos).
DERIVED_FAMILIES = ("lines", "edges", "curves")
#: How often an idle worker removes probes past their age (MICROSCOPE_PROBE_DAYS).
EXPIRE_SECONDS = 3600.0


@dataclass
class WorkerStats:
    jobs: int = 0
    filled: int = 0
    failed: int = 0


@dataclass
class Worker:
    stage: Stage
    queue: JobQueue
    fill: bool = False
    #: With ``fill``: first the tuning curves of every main layer still without them (`precompute.stages.tuning`).
    tune: bool = True
    #: With ``fill``: then NMF groups and a sparse dictionary of the default layers (`precompute.stages.factors`), with
    #: these `FactorsConfig` settings.
    factor: bool = True
    factor_settings: dict = field(default_factory=dict)
    #: With ``fill``: after the tuning, the randomization test of the attribution maps (`precompute.stages.sanity`) on this
    #: many of the dataset's images.
    sanity: bool = True
    sanity_images: int = 20
    fill_batch: int = 4
    #: With ``fill``: the first this many units of every main layer are drawn before anything else (0: none).
    first_look: int = FIRST_LOOK
    defaults: Defaults = ON_DEMAND
    name: str = field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}")
    stats: WorkerStats = field(default_factory=WorkerStats)
    doing: str = "idle"
    _serving: bool = False
    _complete: set[str] = field(default_factory=set)
    _tuned: set[str] = field(default_factory=set)
    _factored: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)

    @property
    def store(self) -> Store:
        return self.stage.store

    @property
    def spec(self) -> ModelSpec:
        return self.stage.spec

    @property
    def handlers(self) -> dict[str, Callable[..., None]]:
        """What this worker does with each kind of job (`JobQueue.run` hands them to the job it runs)."""
        return {"render": self.render, "probe": self.probe, "forget": self.forget, "probe_render": self.probe_render,
                "ablate": self.ablate}

    def run(self, max_jobs: int | None = None, until_idle: bool = False) -> WorkerStats:
        """Serve jobs (and fill) until stopped, ``max_jobs`` are done, or, with ``until_idle``, nothing is left."""
        beat = threading.Thread(target=self._heartbeat, daemon=True)
        self.queue.beat(self.name, "starting")
        beat.start()
        recovered = self.queue.recover()
        if recovered:
            log.warning("requeued %d jobs left in flight by workers that are gone", recovered)
        last_recovery = time.monotonic()
        self.expire_probes()
        last_expiry = time.monotonic()
        try:
            while not self._stop.is_set():
                if max_jobs is not None and self.stats.jobs >= max_jobs:
                    break
                if self.serve_one():
                    continue
                if self.fill and self.fill_one():
                    continue
                if until_idle:
                    break
                if time.monotonic() - last_recovery > RECOVER_SECONDS:
                    self.queue.recover()
                    last_recovery = time.monotonic()
                if time.monotonic() - last_expiry > EXPIRE_SECONDS:
                    self.expire_probes()
                    last_expiry = time.monotonic()
                self._stop.wait(IDLE_SECONDS)
        finally:
            self._stop.set()
            beat.join(timeout=5)
            self.queue.leave(self.name)
        return self.stats

    def stop(self) -> None:
        self._stop.set()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.queue.beat(self.name, self.doing)
            except Exception:  # noqa: BLE001 - a busy queue file must not kill the heartbeat
                log.exception("heartbeat failed")
        # The final beat is `leave`, in the main thread.

    def expire_probes(self) -> int:
        """Remove probes older than the settings' ``probe_days`` (their blobs go with the next gc)."""
        from datetime import UTC, datetime

        from app.core.store.maintenance import remove_probes

        removed = remove_probes(self.store, self.store.settings.probe_days, datetime.now(UTC).replace(tzinfo=None))
        if removed:
            log.info("removed %d probes older than %d days", removed, self.store.settings.probe_days)
        return removed

    # Jobs ---------------------------------------------------------------------------------

    def serve_one(self) -> bool:
        """Run the most urgent waiting job, if any."""
        taken = self.queue.take(self.name, self.spec.name)
        if taken is None:
            return False
        key, task = taken
        previous, self.doing = self.doing, key
        self._serving = True
        finished = True
        try:
            self.queue.run(task, self.handlers)
        except MicroscopeError as error:  # the job's input is wrong: failed, with its message
            log.warning("%s failed: %s", key, error)
            self.queue.fail(key, str(error))
            self.stats.failed += 1
        except Exception as error:  # noqa: BLE001 - any other failure is retried a bounded number of times
            log.exception("%s failed unexpectedly", key)
            finished = not self.queue.retry(key, task)
            if finished:
                self.queue.fail(key, f"failed {MAX_ATTEMPTS} times: {type(error).__name__}: {error}")
                self.stats.failed += 1
        else:
            self.queue.done(key)
        finally:
            self._serving = False
            self.doing = previous
        if finished and key.startswith("probe:"):
            self.queue.drop_upload(key.rsplit(":", 1)[1])  # done or failed for good: its bytes go
        self.stats.jobs += 1
        return True

    def between_steps(self) -> None:
        """Called inside a fill batch's render: people waiting on a page go first."""
        if not self._serving:
            while not self._stop.is_set() and self.serve_one():
                pass

    def render(self, model: str, layer: str, units: list[int], technique: str) -> None:
        spec = self._spec(model)
        if layer not in spec.layer_names:  # a derived layer factored since this worker started
            self.refresh_layers()
            spec = self.spec
        config = on_demand_config(spec.layer(layer), units, technique, self.defaults, batch=len(units),
                                  input_size=spec.input_size)
        run_vis(self.stage, config)

    def probe(self, model: str, sha256: str, probe_id: str | None) -> None:
        self._spec(model)  # this worker runs that model
        key = JobQueue.probe_key(model, sha256)
        if probe_id is not None and self.queue.forgotten(probe_id):
            self._forgotten(key, probe_id)  # deleted by its owner while it waited
            return
        data = self.queue.upload(sha256)
        if data is None:
            raise MicroscopeError("its image is no longer in the queue: upload it again")
        probe_id = probe_id or new_probe_id()
        run_probe(self.stage, sha256, data, public_id=probe_id)
        if self.queue.forgotten(probe_id):  # deleted while it ran (a forget job on another worker found no row)
            delete_probe(self.store, probe_id)
            self._forgotten(key, probe_id)
        self.queue.forget_ids(key)  # the row holds the id now

    def probe_render(self, model: str, probe_id: str, layer: str, kind: str, index: int) -> None:
        """A picture of a stored probe: a neuron group's direction (``group``), the attribution maps of a target
        (``attribution``), or its Grad-CAM at a chosen layer (``grad_cam:LAYER``)."""
        self._spec(model)
        if self.queue.forgotten(probe_id):
            return  # deleted by its owner: nothing to render for
        if layer not in self.spec.layer_names:
            raise MicroscopeError(f"{model} has no layer {layer!r}")
        if kind == "group":
            render_group(self.stage, probe_id, layer, index, self.defaults)
        elif kind == "contributions":
            probe_contributions(self.stage, probe_id, layer)
        elif kind == "caricature":
            render_caricature(self.stage, probe_id, layer, self.defaults)
        elif kind == "attribution":
            attribute_probe(self.stage, probe_id, layer, index)
        elif kind.startswith("grad_cam:"):
            attribute_probe(self.stage, probe_id, layer, index, cam_layer=kind.split(":", 1)[1])
        else:
            raise MicroscopeError(f"no picture of kind {kind!r}: group, caricature, contributions, attribution or grad_cam:LAYER")

    def ablate(self, model: str, target: str, mode: str) -> None:
        """An ablation over the dataset the examples stage read (`precompute.live.ablation`); requests are served between
        its batches."""
        from precompute.live.ablation import run_ablation, target_of
        from precompute.running.runs import stored_dataset_root

        self._spec(model)
        root = stored_dataset_root(self.store)
        if root is None:
            raise MicroscopeError("no dataset in the store to ablate over: run the examples stage first")
        if target.startswith("direction:") and target.split(":")[1] not in self.spec.layer_names:
            self.refresh_layers()  # a derived layer factored since this worker started
        run_ablation(self.stage, root, target_of(self.store, self.stage.spec, target), mode, poll=self.between_steps)

    def forget(self, model: str, probe_id: str) -> None:
        """Delete a probe its owner asked to delete: its rows and images, or its upload if it still waits."""
        self._spec(model)
        delete_probe(self.store, probe_id)
        key = self.queue.probe_of(probe_id)
        if key is None or self.queue.state(key).state not in ("queued", "running"):
            self._forgotten(key, probe_id)
        # else the probe's own job finds the mark and does nothing, then clears it

    def _forgotten(self, key: str | None, probe_id: str) -> None:
        if key is not None:
            self.queue.drop_upload(key.rsplit(":", 1)[1])
            self.queue.forget_ids(key)
        self.queue.unforget(probe_id)

    def _spec(self, model: str) -> ModelSpec:
        if model != self.spec.name:
            raise MicroscopeError(f"this worker runs {self.spec.name}, not {model}")
        return self.spec

    def refresh_layers(self) -> None:
        """Take in the derived layers the store holds now (`precompute.models.derived`)."""
        from precompute.models.derived import with_factors

        self.stage = replace(self.stage, net=with_factors(self.store, self.stage.net, self.stage.device))

    # Fill ---------------------------------------------------------------------------------

    def fill_order(self) -> list[LayerSpec]:
        """Every main layer in network order (the Circuits thread's early vision first), the derived layers,
        then the branches."""
        main = list(self.spec.main_layers)
        derived = [layer for layer in self.spec.layers if layer.is_derived]
        rest = [layer for layer in self.spec.layers if not layer.is_main and not layer.is_derived and layer.kind != "logits"]
        return main + derived + rest

    def factor_one(self) -> bool:
        """NMF groups, then a dictionary, of the next default layer without them (with this recipe); False when
        every one has them. Needs the dataset the examples stage read (its images are sampled again)."""
        from precompute.stages.factors import FactorsConfig, default_layers, run_factors
        from precompute.models.derived import base_network
        from precompute.running.runs import stored_dataset_root

        claimed = self.queue.claimed()
        root = stored_dataset_root(self.store)
        for method in ("nmf", "sae"):
            for layer in default_layers(base_network(self.stage.net).spec):
                key = f"factor:{self.spec.name}:{layer.name}:{method}"
                if key in self._factored or key in claimed or not self.queue.claim(self.name, key):
                    continue
                self.doing = key
                try:
                    if root is None:
                        raise MicroscopeError("no dataset in the store: run the examples stage first")
                    config = FactorsConfig(layers=(layer,), method=method, **self.factor_settings)
                    result = run_factors(self.stage.quiet(), root, config, poll=self.between_steps)
                except MicroscopeError as error:  # its input is wrong: the worker goes on rendering
                    log.warning("factoring %s (%s) failed: %s", layer.name, method, error)
                    result = None
                finally:
                    self.doing = "idle"
                self.queue.done(key)
                self._factored.add(key)
                self._tuned.discard(f"{layer.name}_{method}")  # its directions are new: tune them again
                self.refresh_layers()
                self._complete.clear()
                if result is not None and result.layers_factored:
                    log.info("factored %s (%s) in %.0f s", layer.name, method, sum(result.seconds.values()))
                    return True
        return False

    def sanity_one(self) -> bool:
        """The randomization test of every attribution method, once (with this recipe); False when it is stored.
        Requests are served between images (the network is its real self there)."""
        from precompute.running.runs import stored_dataset_root
        from precompute.stages.sanity import SanityConfig, run_sanity

        key = f"sanity:{self.spec.name}"
        if key in self._factored or key in self.queue.claimed() or not self.queue.claim(self.name, key):
            return False
        self.doing = key
        try:
            root = stored_dataset_root(self.store)
            if root is None:
                raise MicroscopeError("no dataset in the store: run the examples stage first")
            result = run_sanity(self.stage, root, SanityConfig(images=self.sanity_images), poll=self.between_steps)
        except MicroscopeError as error:
            log.warning("the randomization test failed: %s", error)
            result = None
        finally:
            self.doing = "idle"
            self.queue.done(key)
            self._factored.add(key)
        if result is not None and result.methods_tested:
            log.info("randomization test of %d methods in %.0f s", result.methods_tested, result.seconds)
            return True
        return False

    def tune_one(self) -> bool:
        """Tune the next main layer without tuning curves (with this recipe), then the next derived layer (lines,
        edges and curves: a dictionary's features beside the neurons on the family pages); False when every one
        has them."""
        from precompute.stages.tuning import TuningConfig, run_tuning

        claimed = self.queue.claimed()
        plan = [(layer, TuningConfig(layers=(layer,))) for layer in self.spec.main_layers]
        plan += [(layer, TuningConfig(layers=(layer,), families=DERIVED_FAMILIES))
                 for layer in self.spec.layers if layer.is_derived]
        for layer, config in plan:
            key = f"tune:{self.spec.name}:{layer.name}"
            if layer.name in self._tuned or key in claimed or not self.queue.claim(self.name, key):
                continue  # done, or another worker tunes it
            self.doing = key
            try:
                result = run_tuning(self.stage, config, poll=self.between_steps)
            except MicroscopeError as error:  # its input is wrong (no catalog, say): the worker goes on rendering
                log.warning("tuning %s failed: %s", layer.name, error)
                self._tuned.add(layer.name)
                self.queue.done(key)
                continue
            finally:
                self.doing = "idle"
            self.queue.done(key)
            self._tuned.add(layer.name)
            if result.layers_tuned:
                log.info("tuned %s in %.0f s", layer.name, result.seconds[layer.name])
                return True
        return False

    def fill_one(self) -> bool:
        """Tune or render the next missing part; False when the whole model is tuned and rendered. A stage the
        network cannot have (`model_skips`: tuning's RGB stimuli for a multispectral one) is left out."""
        if self.first_look and self.render_one(self.spec.main_layers, below=self.first_look):
            return True  # what a newcomer opens first, before the long analyses
        skips = model_skips(self.spec)
        tune, sanity = self.tune and "tuning" not in skips, self.sanity and "sanity" not in skips
        if tune and self.tune_one():
            return True
        if sanity and self.sanity_one():
            return True
        if self.factor and self.factor_one():
            return True
        if tune and self.tune_one():  # the derived layers just factored
            return True
        return self.render_one(self.fill_order())

    def render_one(self, layers: Sequence[LayerSpec], below: int | None = None) -> bool:
        """Render the next batch of ``layers``' units still without a picture of this recipe (only units under
        ``below``, if given); False when they all have one."""
        claimed = self.queue.claimed()
        for layer in layers:
            if layer.name in self._complete:
                continue
            config = on_demand_config(layer, [0], "channel", self.defaults, input_size=self.spec.input_size)
            digest = recipe(config, self.spec, layer, "channel", self.stage.weights_sha256, self.stage.device)["recipe_sha256"]
            missing = missing_units(self.store, self.spec, layer, "channel", digest)
            if not missing:
                self._complete.add(layer.name)
                continue
            missing = [unit for unit in missing if below is None or unit < below]
            for start in range(0, len(missing), self.fill_batch):
                units = missing[start:start + self.fill_batch]
                key = f"fill:{self.spec.name}:{layer.name}:{units[0]}-{units[-1]}"
                if key in claimed or not self.queue.claim(self.name, key):
                    continue  # another worker renders it
                self.doing = key
                try:
                    config = on_demand_config(layer, units, "channel", self.defaults, batch=len(units),
                                              input_size=self.spec.input_size)
                    result = run_vis(self.stage, config, poll=self.between_steps)
                finally:
                    self.doing = "idle"
                self.queue.done(key)
                self.stats.filled += result.rendered
                return True
        return False
