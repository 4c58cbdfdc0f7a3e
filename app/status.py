"""Where a queued job stands, in words, and how often its page asks again: one rule for every kind of job (a
render, a probe, a group's picture, a caricature, an attribution, a layer's contributions, an ablation)."""

from __future__ import annotations

from dataclasses import dataclass

from app.core.jobs import JobState

#: How often a waiting page polls while a worker runs, and while none does (it may start any time).
POLL_SECONDS = 1
POLL_IDLE_SECONDS = 5


@dataclass(frozen=True)
class JobStatus:
    message: str
    #: Seconds until the page asks again; None when nothing is on its way.
    poll: int | None

    @property
    def waiting(self) -> bool:
        return self.poll is not None


def job_status(job: JobState, workers: int, doing: str, *, what: str = "", idle: str = "",
               no_worker: str = "") -> JobStatus:
    """The words and poll interval of ``job`` with ``workers`` live workers: ``doing`` while it runs (``"Rendering
    now."``), its place in the queue while it waits (``what``: "for rendering"), ``idle`` when nothing is asked,
    its error when it failed; a job that waits with no worker says so, with ``no_worker`` (the command to start
    one)."""
    waiting = job.state in ("queued", "running")
    if job.state == "running":
        message = doing
    elif job.state == "queued":
        message = f"Queued{' ' + what if what else ''}: {job.position} of {job.pending} waiting."
    elif job.state == "failed":
        message = f"Failed: {job.message}"
    else:
        message = idle
    if waiting and not workers:
        message += f" No worker is running{', so nothing happens until one starts: ' + no_worker if no_worker else '.'}"
    return JobStatus(message, (POLL_SECONDS if workers else POLL_IDLE_SECONDS) if waiting else None)


#: What a worker's fill does, in order (`precompute.running.worker.Worker.fill_one`), for the model page.
FILL_ORDER = ("requests first, always; then the first units of every main layer (what a layer page shows first), "
              "the tuning curves of every main layer, the attribution sanity test, two layers' NMF groups and "
              "dictionaries, and every other unit's picture")


def worker_doing(doing: str) -> str:
    """A worker's heartbeat (``fill:model:layer:0-3``, ``tune:model:layer``...) in words."""
    kind, _, rest = doing.partition(":")
    parts = rest.split(":")
    if kind == "fill" and len(parts) == 3:
        return f"drawing units {parts[2]} of {parts[1]}"
    if kind == "tune" and len(parts) == 2:
        return f"computing the tuning curves of {parts[1]}"
    if kind == "factor" and len(parts) == 3:
        return f"factoring {parts[1]} ({'NMF groups' if parts[2] == 'nmf' else 'a sparse dictionary'})"
    if kind == "sanity":
        return "running the attribution maps' sanity test"
    if kind in ("render", "probe", "forget", "probe_render", "ablate"):
        return "answering a request"
    return "waiting for requests" if doing in ("idle", "starting") else doing
