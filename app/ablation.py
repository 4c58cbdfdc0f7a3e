"""Ablations over the dataset (issue 23), read from the store and the queue (torch-free).

A unit's page (or a direction's) and a tuning family's page show what the network's top-1 and top-5 become
without it, by zero or by mean activation, and queue the job that measures it (`precompute.ablation`).
"""

from __future__ import annotations

from sqlalchemy import Connection

from app import queries
from app.core.contracts import ABLATION_MODES
from app.core.jobs import JobQueue
from app.page_types import AblationRun, AblationView

MODES = ABLATION_MODES


def ablation_view(queue: JobQueue | None, connection: Connection, model: str, key: str, label: str, url: str,
                  live: bool = True) -> AblationView:
    """What the store holds of an ablation, and (given the ``queue``) where its jobs stand; ``live``: the policy
    lets visitors queue one (pages without a queue show the stored figures and the button)."""
    stored = {mode: (figures, digest) for mode, figures, digest in connection.execute(
        queries.ablations, {"model": model, "key": key})}
    runs = []
    for mode in MODES:
        job = queue.state(JobQueue.ablation_key(model, key, mode)) if queue is not None else None
        if job is not None and job.state in ("queued", "running"):
            message = "Running now." if job.state == "running" else f"Queued: {job.position} of {job.pending} waiting."
            if not queue.live_workers():
                message += " No worker is running."
            runs.append(AblationRun(mode, job.state, *stored.get(mode, (None, None)), message=message))
        elif mode in stored:
            runs.append(AblationRun(mode, "done", *stored[mode]))
        elif job is not None and job.state == "failed":
            runs.append(AblationRun(mode, "failed", message=f"Failed: {job.message}"))
        else:
            runs.append(AblationRun(mode, "none" if live else "off"))
    poll = 2 if any(run.state in ("queued", "running") for run in runs) else None
    return AblationView(key, label, url, runs, poll)
