"""Attribution on probes and the randomization test behind each map (issue 23), read from the store (torch-free).

A probe's maps (`precompute.live.probe.attributions`) explain a target: one of its top classes or one of the units it
lists. Each map carries its method's result in `Model randomization test <precompute.methods.attribution>`_ words: a
method whose maps decorrelate from the real network's once the weights are re-initialized depends on the model;
one whose maps stay alike is treated with care (Adebayo et al. 2018).
"""

from __future__ import annotations

from sqlalchemy import Connection

from app import queries, urls
from app.core import verdicts
from app.catalog import Catalog
from app.core.jobs import JobQueue
from app.probes import live_probe
from app.page_types import AttributionMap, AttributionTarget, SanityRow, Verdict
from app.refs import pictures, unit_ref
from app.status import job_status

LABELS = {"gradient": "vanilla gradient", "integrated_gradients": "integrated gradients", "grad_cam": "Grad-CAM",
          "guided_backprop": "guided backprop (control)", "guided_grad_cam": "guided Grad-CAM (control)"}
TARGET_KINDS = ("class", "unit")
#: The methods a probe's maps are made with (`precompute.methods.attribution.METHODS`); the others are the test's controls.
PROBE_METHODS = ("gradient", "integrated_gradients", "grad_cam")


def sanity_command(model: str, kind: str = "class") -> str:
    return f"microscope precompute sanity --model {model}" + ("" if kind == "class" else f" --targets {kind}")


def sanity_rows(connection: Connection, model: str) -> list[SanityRow]:
    """Each method's cascade per kind of target, top group first, with its verdict (`app.core.verdicts`)."""
    steps: dict[tuple[str, str, str], list[dict]] = {}
    for method, kind, at, depth, randomized, images, degenerate, figures in connection.execute(queries.sanity_steps,
                                                                                                {"model": model}):
        steps.setdefault((kind, method, at), []).append({
            "depth": depth, "randomized": randomized, "images": images, "degenerate": degenerate, "figures": figures})
    controls = {kind: rows for (kind, method, _), rows in steps.items() if method == verdicts.CONTROL}
    url = urls.model(model) + "#sanity"
    rows = []
    for (kind, method, at), cascade in steps.items():
        judged = verdicts.judge(method, cascade, controls.get(kind))
        rows.append(SanityRow(method, LABELS.get(method, method), kind, at, cascade,
                              Verdict(judged.passes, judged.text, url), method in verdicts.CONTROLS,
                              verdicts.judged_step(len(cascade))))
    order = list(LABELS)
    return sorted(rows, key=lambda row: (TARGET_KINDS.index(row.target), order.index(row.method) if row.method in order else 99))


def sanity_plot(connection: Connection, model: str) -> tuple[bytes, str]:
    """The SVG of the model's cascades (`app.plots.sanity_svg`) and its ETag (a digest of what it draws)."""
    import hashlib
    import json

    from app.core.errors import NotFound
    from app.plots import sanity_svg  # matplotlib: loaded with the first plot, not with the server

    rows = sanity_rows(connection, model)
    if not rows:
        raise NotFound(f"the randomization test has not been run on {model}: {sanity_command(model)}")
    drawn = json.dumps([{"method": r.method, "label": r.label, "target": r.target, "control": r.control,
                         "judged_step": r.judged_step, "steps": r.steps} for r in rows], sort_keys=True)
    return sanity_svg(drawn, verdicts.DECORRELATED), f'"{hashlib.sha256(drawn.encode()).hexdigest()[:16]}"'


def _unmeasured(model: str, method: str, kind: str, at: str, measured_at: str | None) -> Verdict:
    url = urls.model(model) + "#sanity"
    if measured_at is not None and at != measured_at:
        return Verdict(None, f"not measured at {at}: the randomization test measures Grad-CAM at {measured_at} for this "
                             "kind of target", url)
    return Verdict(None, f"not measured for this kind of target ({kind}): {sanity_command(model, kind)}", url)


def verdicts_by_target(connection: Connection, model: str) -> dict[tuple[str, str], SanityRow]:
    """The stored cascades by (method, target kind)."""
    return {(row.method, row.target): row for row in sanity_rows(connection, model)}


def verdict_for(measured: dict[tuple[str, str], SanityRow], model: str, method: str, kind: str, at: str) -> Verdict:
    """The verdict of a map: only what the test measured (the same method, kind of target and Grad-CAM layer)."""
    row = measured.get((method, kind))
    if row is None or row.at != (at or ""):
        return _unmeasured(model, method, kind, at, None if row is None else row.at)
    return row.verdict


def probe_attributions(state, connection: Connection, catalog: Catalog, model: str, probe_id: str,  # noqa: ANN001
                       row) -> list[AttributionTarget]:  # noqa: ANN001
    """A stored probe's maps by target (in the order they were made: the top class's first), with the job state of
    any target whose maps are being made."""
    measured = verdicts_by_target(connection, model)
    logits = next((layer.name for layer in catalog.model(model).layers if layer.kind == "logits"), None)
    by_target: dict[tuple[int, int | None, int | None], list[AttributionMap]] = {}
    for unit_id, y, x, method, at, key, params in connection.execute(queries.probe_attributions, {"probe": row.id}):
        kind = "unit" if y is not None else "class"
        by_target.setdefault((unit_id, y, x), []).append(AttributionMap(
            method, LABELS.get(method, method) + (f" at {at}" if at else ""), at, urls.probe_image(model, probe_id, key),
            params, verdict_for(measured, model, method, kind, at)))
    shown = pictures(connection, [unit_id for unit_id, _, _ in by_target])
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
    job = queue.state(JobQueue.probe_render_key(model, probe_id, layer, f"grad_cam:{at}" if at else "attribution", index))
    if job.state == "none":
        return "done", ""
    return job.state, job_status(job, len(queue.live_workers()), "Being made now.").message


def attribution_status(state, connection: Connection, catalog: Catalog, model: str, probe_id: str, layer: str,  # noqa: ANN001
                       index: int, at: str | None = None) -> AttributionTarget:
    """One target of a stored probe: its maps so far and the state of the job that makes the rest."""
    from app.core.errors import NotFound

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
