"""Attribution on probes and the randomization test behind each map (issue 23), read from the store (torch-free).

A probe's maps (`precompute.probe.attributions`) explain a target: one of its top classes or one of the units it
lists. Each map carries its method's result in `Model randomization test <precompute.attribution>`_ words: a
method whose maps decorrelate from the real network's once the weights are re-initialized depends on the model;
one whose maps stay alike is treated with care (Adebayo et al. 2018).
"""

from __future__ import annotations

from sqlalchemy import Connection

from app import queries, urls
from app.catalog import Catalog
from app.jobs import JobQueue
from app.page_types import AttributionMap, AttributionTarget, SanityRow, Verdict
from app.refs import pictures, unit_ref

LABELS = {"gradient": "vanilla gradient", "integrated_gradients": "integrated gradients", "grad_cam": "Grad-CAM"}
#: A method passes when, with every weight group re-initialized, its maps' median Spearman correlation with the
#: real network's is below this.
PASSES_BELOW = 0.5


def sanity_command(model: str) -> str:
    return f"microscope precompute sanity --model {model}"


def sanity_rows(connection: Connection, model: str) -> list[SanityRow]:
    """Each method's cascade, top group first, with its verdict."""
    steps: dict[str, list[dict]] = {}
    for method, depth, randomized, spearman, ssim, recipe in connection.execute(queries.attribution_checks, {"model": model}):
        steps.setdefault(method, []).append({"depth": depth, "randomized": randomized, "spearman": spearman, "ssim": ssim,
                                             "images": recipe.get("images")})
    return [SanityRow(method, LABELS.get(method, method), rows, _verdict(model, rows)) for method, rows in steps.items()]


def _verdict(model: str, rows: list[dict]) -> Verdict:
    url = urls.model(model) + "#sanity"
    if not rows:
        return Verdict(None, f"not tested on this model yet ({sanity_command(model)})", url)
    last = rows[-1]
    spearman = last["spearman"]
    if spearman < PASSES_BELOW:
        return Verdict(True, f"changes when the weights are randomized (rank correlation {spearman:.2f} with every "
                       "layer re-initialized): the map depends on the model", url)
    return Verdict(False, f"barely changes when the weights are randomized (rank correlation {spearman:.2f} with every "
                   "layer re-initialized): treat with care", url)


def verdicts(connection: Connection, model: str) -> dict[str, Verdict]:
    found = {row.method: row.verdict for row in sanity_rows(connection, model)}
    return {method: found.get(method) or _verdict(model, []) for method in LABELS}


def probe_attributions(state, connection: Connection, catalog: Catalog, model: str, probe_id: str,  # noqa: ANN001
                       row) -> list[AttributionTarget]:  # noqa: ANN001
    """A stored probe's maps by target (in the order they were made: the top class's first), with the job state of
    any target whose maps are being made."""
    said = verdicts(connection, model)
    by_target: dict[tuple[int, int | None, int | None], list[AttributionMap]] = {}
    for unit_id, y, x, method, at, key, params in connection.execute(queries.probe_attributions, {"probe": row.id}):
        by_target.setdefault((unit_id, y, x), []).append(AttributionMap(
            method, LABELS.get(method, method) + (f" at {at}" if at else ""), at, urls.probe_image(model, probe_id, key),
            params, said.get(method) or _verdict(model, [])))
    shown = pictures(connection, [unit_id for unit_id, _, _ in by_target])
    logits = next((layer.name for layer in catalog.model(model).layers if layer.kind == "logits"), None)
    queue = state.queue()
    targets = []
    for (unit_id, y, x), maps in by_target.items():
        ref = unit_ref(catalog, unit_id, shown)
        job = _job(queue, model, probe_id, ref.layer, ref.index)
        targets.append(AttributionTarget("class" if ref.layer == logits else "unit", ref, y, x, maps,
                                         urls.probe_attribution(model, probe_id, ref.layer, ref.index), job[0], job[1]))
    return targets


def _job(queue: JobQueue | None, model: str, probe_id: str, layer: str, index: int, at: str | None = None) -> tuple[str, str]:
    if queue is None:
        return "done", ""
    state = queue.state(JobQueue.probe_render_key(model, probe_id, layer, f"grad_cam:{at}" if at else "attribution", index))
    if state.state == "none":
        return "done", ""
    if state.state == "failed":
        return "failed", f"Failed: {state.message}"
    return state.state, "Being made now." if state.state == "running" else f"Queued: {state.position} of {state.pending}."


def attribution_status(state, connection: Connection, catalog: Catalog, model: str, probe_id: str, layer: str,  # noqa: ANN001
                       index: int, at: str | None = None) -> AttributionTarget:
    """One target of a stored probe: its maps so far and the state of the job that makes the rest."""
    from app.errors import NotFound
    from app.live_pages import live_probe

    entry = catalog.model(model)
    unit_id = entry.layer(layer).unit_id(index)
    if at is not None:
        entry.layer(at)
    queue = state.queue()
    row = live_probe(state, connection, model, probe_id)
    logits = next((spec.name for spec in entry.layers if spec.kind == "logits"), None)
    if layer == logits:
        listed = index in [c["index"] for c in row.classes]
        position = (None, None)
    else:
        found = [(y, x) for u, _, _, y, x, *_ in connection.execute(queries.probe_units, {"probe": row.id}) if u == unit_id]
        listed, position = bool(found), (found[0] if found else (None, None))
    if not listed:
        raise NotFound(f"{layer}:{index} is not among the probe's top classes or units")
    targets = [t for t in probe_attributions(state, connection, catalog, model, probe_id, row)
               if (t.unit.layer, t.unit.index) == (layer, index)]
    job, message = _job(queue, model, probe_id, layer, index, at)
    if targets:
        return AttributionTarget(targets[0].kind, targets[0].unit, targets[0].y, targets[0].x, targets[0].maps,
                                 targets[0].request_url, job if job != "done" else "done", message)
    ref = unit_ref(catalog, unit_id, pictures(connection, [unit_id]))
    return AttributionTarget("class" if layer == logits else "unit", ref, *position, [],
                             urls.probe_attribution(model, probe_id, layer, index), job if job != "done" else "none", message)
