"""The live side's job queue: what the server asks for, what workers take (torch-free).

The queue is Huey's: a SQLite file beside the store by default
(``<data>/queue.sqlite3``), Redis when ``MICROSCOPE_QUEUE=redis://...`` (several
hosts). The server only writes jobs; workers (``microscope worker``) take them
and write the results into the store with the precompute stages' code.

Around Huey's queue, three things it does not do by itself:

- **One job per request.** Each job has a key (``render:model:layer:units:technique``,
  ``probe:model:sha256``, ``probe-render:model:probe:layer:kind:index``); a second request for a key that is queued or running
  joins it instead of adding a job.
- **One list per model.** A worker holds one network, so each model's jobs wait in
  their own Huey queue (``microscope-jobs-<model>``) and a worker takes only its
  model's; keys, uploads and the journal are shared.
- **Bounded.** Past ``capacity`` pending jobs of a model a request is refused (`QueueFull`, a 503),
  before anything of it is stored: a refused upload leaves no bytes behind.
- **Failures are kept, not swallowed.** A job that fails with an input error (`MicroscopeError`) is
  recorded as failed with its message; one that fails unexpectedly is retried up to ``MAX_ATTEMPTS``
  times, then recorded as failed. A failed job's upload is deleted like a done one's.
- **Jobs outlive their worker.** Huey's dequeue removes a job before it runs,
  so a worker killed mid-job would lose it. A worker records each job it takes
  in an in-flight journal and clears it when the job is done; jobs in flight
  on a dead worker (no heartbeat, or its process gone) go back to the queue.
  Jobs are idempotent (a result already stored is not computed again), so a
  job that was done but not yet cleared when its worker died runs to a no-op.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from huey import PriorityRedisHuey, SqliteHuey
from huey.api import Huey, Task
from huey.constants import EmptyData

from app.core.errors import MicroscopeError
from app.core.settings import Settings
from app.core.store.schema import new_probe_id

QUEUE_FILE = "queue.sqlite3"
#: Pending jobs past which requests are refused (``MICROSCOPE_QUEUE_LIMIT``).
DEFAULT_CAPACITY = 5000
#: A worker writes its heartbeat this often, and counts as gone after ``ALIVE_SECONDS`` without one.
HEARTBEAT_SECONDS = 2.0
ALIVE_SECONDS = 15.0
#: Priorities: a person waiting on a page first, a whole layer asked for next (the fill runs when none waits).
PAGE = 100
LAYER = 10
#: Runs of a job that fails unexpectedly before it is recorded as failed.
MAX_ATTEMPTS = 3

#: What the worker running a job does with each kind (`JobQueue.run` sets it for that job; the server never runs one).
_HANDLERS: ContextVar[Mapping[str, Callable[..., None]]] = ContextVar("handlers")


def _model_of(key: str) -> str:
    """The model a job key names (``render:model:...``, ``probe:model:sha256``)."""
    return key.split(":")[1]


class QueueFull(MicroscopeError):
    status_code = 503


class TooManyJobs(MicroscopeError):
    """One client's share of the queue is taken (a 429): others keep room."""

    status_code = 429


def _render(key: str, model: str, layer: str, units: list[int], technique: str) -> None:
    _HANDLERS.get()["render"](model, layer, units, technique)


def _probe(key: str, model: str, sha256: str, probe_id: str | None = None) -> None:
    _HANDLERS.get()["probe"](model, sha256, probe_id)  # a job queued before probe ids has none: the worker draws one


def _forget(key: str, model: str, probe_id: str) -> None:
    _HANDLERS.get()["forget"](model, probe_id)


def _probe_render(key: str, model: str, probe_id: str, layer: str, kind: str, index: int) -> None:
    _HANDLERS.get()["probe_render"](model, probe_id, layer, kind, index)


def _ablate(key: str, model: str, target: str, mode: str) -> None:
    _HANDLERS.get()["ablate"](model, target, mode)


def queue_location(settings: Settings) -> str:
    """``MICROSCOPE_QUEUE`` (a Redis URL or a SQLite file), else ``queue.sqlite3`` in the store directory."""
    return settings.queue_url or str(settings.data_dir / QUEUE_FILE)


def _huey(location: str, name: str) -> Huey:
    if location.startswith(("redis://", "rediss://", "unix://")):
        return PriorityRedisHuey(name, url=location, results=False)
    Path(location).parent.mkdir(parents=True, exist_ok=True)
    # fsync: a job the server accepted survives a crash of the machine, not only of the process.
    return SqliteHuey(name, filename=location, results=False, fsync=True, timeout=30)


@dataclass(frozen=True)
class JobState:
    """Where a job stands: ``queued`` (``position`` of ``pending``), ``running``, ``failed`` or ``none``."""

    state: Literal["queued", "running", "failed", "none"]
    position: int | None = None
    pending: int = 0
    #: Why a failed job failed.
    message: str | None = None


@dataclass(frozen=True)
class WorkerBeat:
    worker: str
    host: str
    pid: int
    time: float
    doing: str

    @property
    def alive(self) -> bool:
        if time.time() - self.time > ALIVE_SECONDS:
            return False
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:
                return True
        return True


class JobQueue:
    def __init__(self, location: str, capacity: int | None = None, client_jobs: int | None = None,
                 upload_quota: int | None = None) -> None:
        self.location = location
        self.capacity = capacity or DEFAULT_CAPACITY
        #: Jobs one client may have waiting or running at once (None: no limit).
        self.client_jobs = client_jobs
        #: Shared key-value storage: request markers and uploads.
        self.huey = _huey(location, "microscope")
        self._inflight = _huey(location, "microscope-inflight").storage
        self._workers = _huey(location, "microscope-workers").storage
        #: The size of each upload waiting in the queue (small values: summed for the quota).
        self._sizes = _huey(location, "microscope-upload-sizes").storage
        #: Bytes of uploads that may wait at once, all clients together (None: no quota).
        self.upload_quota = upload_quota
        self._lists: dict[str, tuple[Huey, Any, Any, Any, Any, Any]] = {}

    def jobs(self, model: str) -> Huey:
        """``model``'s own job list (a worker takes only the jobs of the model it runs)."""
        return self._list(model)[0]

    def _list(self, model: str) -> tuple[Huey, Any, Any, Any, Any, Any]:
        if model not in self._lists:
            huey = _huey(self.location, f"microscope-jobs-{model}")
            self._lists[model] = (huey, huey.task(name="render")(_render), huey.task(name="probe")(_probe),
                                  huey.task(name="forget")(_forget), huey.task(name="probe_render")(_probe_render),
                                  huey.task(name="ablate")(_ablate))
        return self._lists[model]

    @classmethod
    def for_store(cls, settings: Settings) -> JobQueue:
        return cls(queue_location(settings), settings.queue_limit, settings.client_jobs, settings.upload_quota_bytes)

    # Keys ---------------------------------------------------------------------------------

    @staticmethod
    def render_key(model: str, layer: str, units: list[int], technique: str = "channel") -> str:
        span = f"{units[0]}" if len(units) == 1 else f"{units[0]}-{units[-1]}"
        return f"render:{model}:{layer}:{span}:{technique}"

    @staticmethod
    def probe_key(model: str, sha256: str) -> str:
        return f"probe:{model}:{sha256}"

    @staticmethod
    def forget_key(model: str, probe_id: str) -> str:
        return f"forget:{model}:{probe_id}"

    @staticmethod
    def ablation_key(model: str, target: str, mode: str) -> str:
        return f"ablate:{model}:{mode}:{target}"

    @staticmethod
    def probe_render_key(model: str, probe_id: str, layer: str, kind: str, index: int) -> str:
        return f"probe-render:{model}:{probe_id}:{layer}:{kind}:{index}"

    # The server's side ---------------------------------------------------------------------

    def request_render(self, model: str, layer: str, units: list[int], technique: str = "channel",
                       priority: int = PAGE, client: str | None = None) -> JobState:
        """Queue a render; one that failed before is tried again (a render's failure may pass)."""
        key = self.render_key(model, layer, units, technique)
        render = self._list(model)[1]
        self.huey.storage.delete_data(f"failed:{key}")
        return self._submit(key, lambda: render.s(key, model, layer, units, technique, priority=priority), client)

    def request_probe(self, model: str, sha256: str, image: bytes, client: str | None = None) -> tuple[str, JobState]:
        """Queue a probe; the image bytes wait in the queue's key-value store until the worker takes them.
        Returns the probe's id (random; a second upload of the same image while it waits gets the same) and its job.

        The bytes are stored only once the job is accepted (the capacity checked); a probe that failed
        answers with its failure (the same image fails the same way).
        """
        key = self.probe_key(model, sha256)
        storage = self.huey.storage
        drawn = new_probe_id()
        storage.put_if_empty(f"probe-id:{key}", drawn.encode())  # the first upload's id wins
        probe_id = bytes(storage.peek_data(f"probe-id:{key}")).decode()
        state = self.state(key)
        if state.state != "none":
            return probe_id, state
        storage.put_data(f"probe-of:{probe_id}", key.encode())
        probe = self._list(model)[2]
        try:
            return probe_id, self._submit(key, lambda: probe.s(key, model, sha256, probe_id, priority=PAGE), client,
                                          store=lambda: self._keep_upload(sha256, image),
                                          unstore=lambda: self.drop_upload(sha256))
        except MicroscopeError:
            self.forget_ids(key)  # refused: nothing of it stays
            raise

    def request_probe_render(self, model: str, probe_id: str, layer: str, kind: str, index: int,
                             client: str | None = None) -> JobState:
        """Queue a picture of a stored probe (``kind`` ``group``: a neuron group's direction); one that failed
        before is tried again."""
        key = self.probe_render_key(model, probe_id, layer, kind, index)
        task = self._list(model)[4]
        self.huey.storage.delete_data(f"failed:{key}")
        return self._submit(key, lambda: task.s(key, model, probe_id, layer, kind, index, priority=PAGE), client)

    def request_ablation(self, model: str, target: str, mode: str, client: str | None = None) -> JobState:
        """Queue an ablation over the dataset (``target`` as `precompute.live.ablation.AblationTarget.key`); one that failed
        before is tried again."""
        key = self.ablation_key(model, target, mode)
        task = self._list(model)[5]
        self.huey.storage.delete_data(f"failed:{key}")
        return self._submit(key, lambda: task.s(key, model, target, mode, priority=LAYER), client)

    def probe_of(self, probe_id: str) -> str | None:
        """The job key of the probe ``probe_id`` while it is not stored (queued, running or failed)."""
        found = self.huey.storage.peek_data(f"probe-of:{probe_id}")
        return None if found is EmptyData else bytes(found).decode()

    def forget_ids(self, key: str) -> None:
        """Drop the id of the probe job ``key`` (once its row holds it, or once it is deleted)."""
        storage = self.huey.storage
        found = storage.peek_data(f"probe-id:{key}")
        if found is not EmptyData:
            storage.delete_data(f"probe-of:{bytes(found).decode()}")
        storage.delete_data(f"probe-id:{key}")

    def request_forget(self, model: str, probe_id: str, client: str | None = None) -> JobState:
        """Delete the probe ``probe_id``: from now on the server answers that it is gone, and a worker
        deletes its rows, images and upload (the server writes no store)."""
        self.huey.storage.put_data(f"forgotten:{probe_id}", b"1")
        forget = self._list(model)[3]
        key = self.forget_key(model, probe_id)
        return self._submit(key, lambda: forget.s(key, model, probe_id, priority=PAGE), client)

    def forgotten(self, probe_id: str) -> bool:
        return self.huey.storage.peek_data(f"forgotten:{probe_id}") is not EmptyData

    def unforget(self, probe_id: str) -> None:
        self.huey.storage.delete_data(f"forgotten:{probe_id}")

    def waiting_upload_bytes(self) -> int:
        return sum(int(bytes(size)) for size in self._sizes.result_items().values())

    def _keep_upload(self, sha256: str, image: bytes) -> None:
        if self.upload_quota is not None:
            waiting = self.waiting_upload_bytes()
            if waiting + len(image) > self.upload_quota:
                raise QueueFull(f"uploads waiting in the queue take {waiting:,} bytes (quota {self.upload_quota:,}): "
                                "try again later")
        self._sizes.put_data(sha256, str(len(image)).encode())
        self.huey.storage.put_data(f"upload:{sha256}", image)

    def upload(self, sha256: str) -> bytes | None:
        data = self.huey.storage.peek_data(f"upload:{sha256}")
        return None if data is EmptyData else bytes(data)

    def drop_upload(self, sha256: str) -> None:
        self.huey.storage.delete_data(f"upload:{sha256}")
        self._sizes.delete_data(sha256)

    def _submit(self, key: str, make: Callable[[], Task], client: str | None = None,
                store: Callable[[], None] | None = None, unstore: Callable[[], None] | None = None) -> JobState:
        """Enqueue ``make()`` under ``key`` unless the same job waits; ``store`` keeps its data, after the
        capacity check and before the job is visible (``unstore`` takes it back if enqueueing fails)."""
        storage = self.huey.storage
        if not storage.put_if_empty(f"queued:{key}", b"?"):
            state = self.state(key)
            if state.state != "none":
                return state  # the same request is queued or running: join it
        jobs = self.jobs(_model_of(key))
        pending = jobs.pending_count()
        if pending >= self.capacity:
            storage.delete_data(f"queued:{key}")
            raise QueueFull(f"the job queue is full ({pending} jobs waiting, limit {self.capacity}): try again later")
        try:
            self._admit(client, key)
        except TooManyJobs:
            storage.delete_data(f"queued:{key}")
            raise
        try:
            if store is not None:
                store()
            task = make()
            storage.put_data(f"queued:{key}", task.id.encode())
            jobs.enqueue(task)
        except BaseException:
            storage.delete_data(f"queued:{key}")
            if unstore is not None:
                unstore()
            raise
        return self.state(key)

    def _admit(self, client: str | None, key: str) -> None:
        """Count ``key`` in ``client``'s share: its jobs still queued or running, at most ``client_jobs``."""
        if client is None or self.client_jobs is None:
            return
        storage = self.huey.storage
        found = storage.peek_data(f"client:{client}")
        keys = [] if found is EmptyData else json.loads(bytes(found))
        keys = [k for k in keys if storage.peek_data(f"queued:{k}") is not EmptyData]
        if len(keys) >= self.client_jobs:
            raise TooManyJobs(f"{client} has {len(keys)} jobs waiting (at most {self.client_jobs} a client): "
                              "try again when they are done")
        storage.put_data(f"client:{client}", json.dumps([*keys, key]).encode())

    def state(self, key: str) -> JobState:
        marker = self.huey.storage.peek_data(f"queued:{key}")
        if marker is EmptyData:
            failed = self.huey.storage.peek_data(f"failed:{key}")
            return JobState("none") if failed is EmptyData else JobState("failed", message=bytes(failed).decode())
        if self._inflight.peek_data(key) is not EmptyData:
            return JobState("running")
        task_id = bytes(marker).decode()
        ids = [task.id for task in self.jobs(_model_of(key)).pending()]
        if task_id in ids:
            return JobState("queued", ids.index(task_id) + 1, len(ids))
        # Marked but neither waiting nor running: its job was lost (a worker killed between taking it
        # and recording it), or it is just being enqueued; a new request queues it again.
        return JobState("none")

    def pending_count(self, model: str) -> int:
        return self.jobs(model).pending_count()

    def workers(self) -> list[WorkerBeat]:
        beats = []
        for worker, value in self._workers.result_items().items():
            try:
                beats.append(WorkerBeat(**json.loads(value)))
            except (TypeError, ValueError):
                continue
        return sorted(beats, key=lambda beat: beat.worker)

    def live_workers(self) -> list[WorkerBeat]:
        return [beat for beat in self.workers() if beat.alive]

    # The worker's side ---------------------------------------------------------------------

    def beat(self, worker: str, doing: str) -> None:
        beat = WorkerBeat(worker, socket.gethostname(), os.getpid(), time.time(), doing)
        self._workers.put_data(worker, json.dumps(beat.__dict__).encode())

    def leave(self, worker: str) -> None:
        self._workers.delete_data(worker)

    def take(self, worker: str, model: str) -> tuple[str, Task] | None:
        """The next job of ``model``, recorded as in flight on ``worker`` (with what it takes to queue it again)."""
        jobs = self.jobs(model)
        task = jobs.dequeue()
        if task is None:
            return None
        key = task.args[0]
        record = {"worker": worker, "task": jobs.serialize_task(task).hex(), "priority": task.priority}
        self._inflight.put_data(key, json.dumps(record).encode())
        return key, task

    def run(self, task: Task, handlers: Mapping[str, Callable[..., None]]) -> None:
        """Run a job here with ``handlers`` (what this worker does with each kind: render, probe, forget,
        probe_render, ablate); its exception propagates (the worker decides: failed, or retried)."""
        token = _HANDLERS.set(handlers)
        try:
            task.execute()
        finally:
            _HANDLERS.reset(token)

    def claim(self, worker: str, key: str) -> bool:
        """Claim work that is not a queued job (a fill batch), so that other workers skip it."""
        return bool(self._inflight.put_if_empty(key, json.dumps({"worker": worker, "task": None}).encode()))

    def done(self, key: str) -> None:
        self._inflight.delete_data(key)
        self.huey.storage.delete_data(f"queued:{key}")
        self.huey.storage.delete_data(f"attempts:{key}")

    def fail(self, key: str, message: str) -> None:
        """Record ``key`` as failed with ``message`` (shown where its status is asked) and clear it."""
        self.huey.storage.put_data(f"failed:{key}", message[:500].encode())
        self.done(key)

    def retry(self, key: str, task: Task) -> bool:
        """Queue a job that failed unexpectedly again, unless it has had ``MAX_ATTEMPTS`` runs (False then)."""
        storage = self.huey.storage
        seen = storage.peek_data(f"attempts:{key}")
        attempts = (0 if seen is EmptyData else int(bytes(seen))) + 1
        if attempts >= MAX_ATTEMPTS:
            return False
        storage.put_data(f"attempts:{key}", str(attempts).encode())
        self._inflight.delete_data(key)
        self.jobs(task.args[1]).enqueue(task)
        return True

    def claimed(self) -> set[str]:
        return set(self._inflight.result_items())

    def recover(self) -> int:
        """Put back the jobs in flight on workers that are gone; drop their claims. Returns jobs requeued."""
        beats = {beat.worker: beat for beat in self.workers()}
        requeued = 0
        for key, value in self._inflight.result_items().items():
            try:
                record: dict[str, Any] = json.loads(value)
            except ValueError:
                record = {"worker": None, "task": None}
            beat = beats.get(record.get("worker"))
            if beat is not None and beat.alive:
                continue
            if self._inflight.pop_data(key) is EmptyData:
                continue  # another worker recovered it first
            if record.get("task"):
                self.jobs(_model_of(key)).storage.enqueue(bytes.fromhex(record["task"]), record.get("priority"))
                requeued += 1
        for worker, beat in beats.items():
            if not beat.alive:
                self._workers.delete_data(worker)
        return requeued
