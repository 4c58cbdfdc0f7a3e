"""The store's probes as the pages find them: a stored probe by its image's digest or its id, and one its owner
has not deleted (`ProbeGone` once they have). Read by the probe's pages and its attribution maps alike."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection

from app import queries
from app.core.errors import NotFound
from app.state import ServerState


class ProbeGone(NotFound):
    """Its owner deleted it (the worker is removing it, or has)."""

    status_code = 410


def live_probe(state: ServerState, connection: Connection, model: str, probe_id: str) -> Any:
    """The row of a stored probe that its owner has not deleted (ProbeGone, NotFound otherwise)."""
    queue = state.queue()
    if queue is not None and queue.forgotten(probe_id):
        raise ProbeGone(f"the probe {probe_id} was deleted")
    row = stored_probe(connection, model, public_id=probe_id)
    if row is None:
        raise NotFound(f"no stored probe {probe_id!r} of {model}")
    return row


def stored_probe(connection: Connection, model: str, *, sha256: str | None = None, public_id: str | None = None) -> Any:
    """The stored probe's row (by the image's digest, or by its id), or None."""
    if sha256 is not None:
        return connection.execute(queries.probe_by_sha256, {"model": model, "sha256": sha256}).first()
    return connection.execute(queries.probe_by_id, {"model": model, "public_id": public_id}).first()
