"""Ablations over the dataset (issue 23), read from the store and the queue (torch-free).

A unit's page (or a direction's) and a tuning family's page show what the network's top-1 and top-5 become
without it, by zero or by mean activation, and queue the job that measures it (`precompute.live.ablation`).
"""

from __future__ import annotations

from sqlalchemy import Connection

from app import queries
from app.core.contracts import ABLATION_MODES
from app.core.jobs import JobQueue
from app.status import job_status
from app.page_types import AblationRun, AblationView

MODES = ABLATION_MODES


def ablation_view(queue: JobQueue | None, connection: Connection, model: str, key: str, label: str, url: str,
                  live: bool = True) -> AblationView:
    """What the store holds of an ablation, and (given the ``queue``) where its jobs stand; ``live``: the policy
    lets visitors queue one (pages without a queue show the stored figures and the button)."""
    stored = {mode: (figures, digest) for mode, figures, digest in connection.execute(
        queries.ablations, {"model": model, "key": key})}
    runs, polls = [], []
    for mode in MODES:
        job = queue.state(JobQueue.ablation_key(model, key, mode)) if queue is not None else None
        status = job_status(job, len(queue.live_workers()), "Running now.") if queue is not None and job is not None else None
        if status is not None and status.waiting:
            runs.append(AblationRun(mode, job.state, *stored.get(mode, (None, None)), message=status.message))
            polls.append(status.poll)
        elif mode in stored:
            runs.append(AblationRun(mode, "done", *stored[mode]))
        elif status is not None and job.state == "failed":
            runs.append(AblationRun(mode, "failed", message=status.message))
        else:
            runs.append(AblationRun(mode, "none" if live else "off"))
    return AblationView(key, label, url, runs, min(polls, default=None))
