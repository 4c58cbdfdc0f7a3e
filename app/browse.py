"""The browsing pages' builders: models, layers, units, circuits, examples and search.

Every builder takes the in-memory `Catalog`, a database connection and the
path's parameters, and returns a typed page (`app.page_types`: the dataclass
whose fields are the JSON schema and the template's context); units appear
as `app.refs` shows them everywhere.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from sqlalchemy import Connection

from app import queries, urls
from app.ablation import ablation_view
from app.core.contracts import unit_target
from app.status import FILL_ORDER
from app.catalog import Catalog, LayerEntry, ModelEntry
from app.core.errors import ModelNotHeld, NotFound
from app.page_types import (
    UnitRef, ModelSummary, IndexPage, LayerSummary, ModelPage, NotHeldPage, LayerPage, Visualization, Example, Connection_, ConnectionGroup, ConnectionsPage, Missing, UnitPage, UnitSummary, ExamplePage, SearchResult, SearchPage,
)
from app.directions import derived_over, factorization, made_of, matches, part_of
from app.modules import modules_sections
from app.refs import Pictures, pictures, unit_ref
from app.tuning import layer_families, unit_tuning
from app.core.zoo.concepts import Hierarchy, Label
from app.core.zoo.registry import REGISTRY
from app.core.store.summary import ModelCoverage
from app.core.zoo.spec import DERIVED_KINDS, Framing

#: Shown in this order; ``pixels`` (the channel in the pixel basis) stands beside ``channel`` for comparison.
TECHNIQUES = ("channel", "pixels", "neuron", "negative", "diversity")
#: The techniques every unit should have (a missing one is named with its command).
CORE_TECHNIQUES = ("channel", "neuron", "negative", "diversity")
#: The technique whose image stands for a unit in grids and circuits.
THUMBNAIL_TECHNIQUE = queries.THUMBNAIL_TECHNIQUE
UNITS_PER_PAGE = 96
STRIP = 8
#: Example ranks a URL may name (stages keep far fewer).
MAX_RANK = 1_000_000
#: Connections shown per group on a unit page (fewer for branch layers, which repeat the block's
#: units); the rest come with the group's "more" (htmx), so a unit page fits a screen or two.
SHOWN = 6
SHOWN_BRANCH = 3


#: Search results per page.
RESULTS_PER_PAGE = 50


def search_page(catalog: Catalog, connection: Connection, query: str, hits: list[Any], page: int, json: bool) -> SearchPage:
    """``hits`` (`app.search.Hit`) cut to ``page``, each unit with its picture; past the last page is a 404."""
    pages = max(1, -(-len(hits) // RESULTS_PER_PAGE))
    if page > pages:
        raise NotFound(f"{query!r} has {len(hits)} results: {pages} pages, not {page}")
    shown = hits[(page - 1) * RESULTS_PER_PAGE:page * RESULTS_PER_PAGE]
    found = pictures(connection, [hit.unit_id for hit in shown if hit.unit_id is not None])
    results = [SearchResult(hit.label, hit.url, hit.reason, unit_ref(catalog, hit.unit_id, found) if hit.unit_id else None,
                            hit.score) for hit in shown]
    return SearchPage(
        title=f"Search: {query}", query=query, results=results, total=len(hits), page=page, pages=pages,
        previous_url=urls.search(query, json, page - 1) if page > 1 else None,
        next_url=urls.search(query, json, page + 1) if page < pages else None,
    )


def index_page(catalog: Catalog, counts: list[ModelCoverage]) -> IndexPage:
    rendered = {model.name: sum(layer.rendered.get(THUMBNAIL_TECHNIQUE, 0) for layer in model.layers) for model in counts}
    models = [
        ModelSummary(entry.name, entry.title, urls.model(entry.name), urls.model(entry.name, json=True),
                     len(entry.layers), entry.units, rendered.get(entry.name, 0))
        for entry in sorted(catalog.models.values(), key=lambda m: m.name)
    ]
    return IndexPage(title="Microscope", models=models)


def model_page(catalog: Catalog, connection: Connection, name: str, counts: list[ModelCoverage],
               filling: bool = False, probes: bool = True, workers: list[str] | None = None) -> ModelPage:
    """``counts`` is the store's coverage (cached by the caller: it scans every table); ``probes``: the live
    policy lets visitors probe their images (else the page links no upload form)."""
    entry = catalog.model(name)
    counts_by_layer = {layer.name: layer for model in counts if model.name == name for layer in model.layers}
    strips: dict[str, list[UnitRef]] = {}
    for unit_id, key in connection.execute(queries.all_thumbnails):
        if unit_id in catalog.units and catalog.units[unit_id][0] == name:
            layer = catalog.units[unit_id][1]
            if len(strips.setdefault(layer, [])) < STRIP:
                strips[layer].append(unit_ref(catalog, unit_id, Pictures({unit_id: urls.blob(key)}, {})))
    dreams = {layer_id: urls.blob(key) for layer_id, key, _, _ in connection.execute(queries.layer_dreams)}
    layers = [
        LayerSummary(
            name=layer.name, kind=layer.kind, channels=layer.channels, url=urls.layer(name, layer.name),
            rendered=counts_by_layer[layer.name].rendered if layer.name in counts_by_layer else {},
            with_examples=counts_by_layer[layer.name].with_examples if layer.name in counts_by_layer else 0,
            with_circuits=counts_by_layer[layer.name].with_circuits if layer.name in counts_by_layer else 0,
            strip=strips.get(layer.name, []), deep_dream_url=dreams.get(layer.id),
        )
        for layer in entry.layers
    ]
    commands = []
    if not any(layer.with_examples for layer in layers):
        commands.append(f"microscope precompute examples --model {name}")
    if not any(layer.with_circuits for layer in layers):
        commands.append(f"microscope precompute circuits --model {name}")
    if not any(layer.rendered for layer in layers):
        commands.append(f"microscope precompute vis --model {name} --layers main --units 0:8")
    from app.attribution import sanity_command, sanity_rows
    from app.modules import network_modularity

    sanity = sanity_rows(connection, name)
    return ModelPage(title=entry.title, name=name, description=entry.description, url=urls.model(name),
                     json_url=urls.model(name, json=True), layers=layers, commands=commands,
                     probe_url=urls.probe_form(name) if probes and "probes" not in entry.skips else None, filling=filling,
                     notes=list(REGISTRY[name].notes) if name in REGISTRY else [], sanity=sanity,
                     sanity_command=None if sanity else sanity_command(name),
                     sanity_plot_url=urls.sanity_plot(name) if sanity else None,
                     modularity=network_modularity(connection, name), skips=entry.skips, workers=workers or [],
                     fill_order=FILL_ORDER if workers else None)


def not_held_page(error: ModelNotHeld) -> NotHeldPage:
    """What ``error.model`` is, what this store holds instead (and how they differ), and how to precompute it."""
    known = REGISTRY[error.model]
    held = [{"name": name, "url": urls.model(name), "note": known.not_to_confuse.get(name, "")} for name in error.held]
    return NotHeldPage(
        title=f"{known.title}: not in this store", error=str(error), name=error.model, description=known.description,
        held=held, command=f"microscope precompute all --model {error.model}",
    )


def layer_page(catalog: Catalog, connection: Connection, model: str, name: str, page: int,
               renders: bool = True, label: str | None = None) -> LayerPage:
    layer = catalog.model(model).layer(name)
    labels = connection.execute(queries.layer_labels, {"ids": list(layer.unit_ids)}).all()
    counts = Counter(concept_name for _, _, concept_name in labels)
    concepts = [{"name": concept_name, "units": count, "url": urls.layer(model, name, label=concept_name)}
                for concept_name, count in sorted(counts.items(), key=lambda item: (-item[1], item[0]))]
    chosen = list(layer.unit_ids)
    if label is not None:
        under = Hierarchy.load().under(label)
        matching = {unit_id for unit_id, concept, _ in labels if concept in under}
        chosen = [unit_id for unit_id in layer.unit_ids if unit_id in matching]
        if not chosen:
            raise NotFound(f"no unit of {model}/{name} is labelled {label!r}", tuple(c["name"] for c in concepts[:5]))
    pages = max(1, -(-len(chosen) // UNITS_PER_PAGE))
    if not 1 <= page <= pages:
        raise NotFound(f"{model}/{name} has pages 1..{pages}, not {page}")
    ids = chosen[(page - 1) * UNITS_PER_PAGE:page * UNITS_PER_PAGE]
    images = pictures(connection, ids)
    rendered = connection.execute(queries.rendered_in, {"ids": list(layer.unit_ids)}).scalar_one()
    missing = None if rendered else f"microscope precompute vis --model {model} --layers {name} --units all"
    found = connection.execute(queries.layer_dream, {"layer": layer.id}).first()
    dream = Visualization("deep_dream", urls.blob(found.blob_key), found.objective, found.recipe) if found else None
    dream_command = (f"microscope precompute dream --model {model} --layers {name}"
                     if dream is None and layer.kind != "logits" else None)
    render_url = urls.render_layer(model, name) if renders and rendered < layer.channels else None
    return LayerPage(
        title=f"{model} / {name}" + (f": {label}" if label else ""), model=model, model_url=urls.model(model), name=name,
        kind=layer.kind, channels=layer.channels, url=urls.layer(model, name, page, label=label),
        json_url=urls.layer(model, name, page, json=True, label=label),
        units=[unit_ref(catalog, unit_id, images) for unit_id in ids], page=page, pages=pages,
        next_url=urls.layer(model, name, page + 1, label=label) if page < pages else None, missing_command=missing,
        render_url=render_url, label=label, concepts=concepts, deep_dream=dream, deep_dream_command=dream_command,
        tuning=layer_families(connection, model, layer),
        factorization=factorization(connection, catalog.model(model), layer),
        derived=derived_over(connection, catalog.model(model), layer),
        derived_commands=_factor_commands(connection, catalog.model(model), layer),
        modules=modules_sections(catalog, connection, catalog.model(model), layer.id),
        skips={**catalog.model(model).skips, **layer.skips},
    )


def _factor_commands(connection: Connection, model: ModelEntry, layer: LayerEntry) -> list[str]:
    """The factors commands for a main layer with a spatial map and no derived layer over it yet."""
    if layer.kind not in ("conv", "mixed", "residual") or derived_over(connection, model, layer):
        return []
    return [f"microscope precompute factors --model {model.name} --layers {layer.name} --method {method}"
            for method in ("nmf", "sae")]


def _examples(connection: Connection, catalog: Catalog, unit_id: int) -> list[Example]:
    model, layer, index = catalog.units[unit_id]
    rows = connection.execute(queries.examples, {"unit": unit_id})
    return [
        Example(kind, rank, activation, path, urls.blob(crop), urls.example(model, layer, index, kind, rank), y, x)
        for kind, rank, activation, crop, y, x, path in rows
    ]


def _connections(
    connection: Connection, catalog: Catalog, unit_id: int, cut: bool = True
) -> tuple[list[ConnectionGroup], list[ConnectionGroup]]:
    """A unit's inputs and outputs, grouped by the other layer; ``cut`` keeps each group's strongest few."""
    rows = connection.execute(queries.edges, {"unit": unit_id}).all()
    others = [source if target == unit_id else target for source, target, *_ in rows]
    notes = {run: params.get("approximation") for run, params in
             connection.execute(queries.run_params, {"ids": sorted({row.run_id for row in rows})})} if rows else {}
    ordered = sorted(zip(rows, others), key=lambda pair: -pair[0].norm)
    # Thumbnails only for the connections shown: a group's tail comes with its "more".
    counts: dict[tuple[bool, str], int] = {}
    visible = []
    for row, other in ordered:
        group = (row.target_id == unit_id, catalog.units[other][1])
        counts[group] = counts.get(group, 0) + 1
        model_entry = catalog.models[catalog.units[other][0]]
        shown = SHOWN_BRANCH if model_entry.layer(group[1]).kind == "branch" else SHOWN
        if not cut or counts[group] <= shown:
            visible.append((row, other))
    images = pictures(connection, [other for _, other in visible])
    model, layer, index = catalog.units[unit_id]
    inputs: dict[str, list[Connection_]] = {}
    outputs: dict[str, list[Connection_]] = {}
    group_notes: dict[tuple[bool, str], str | None] = {}
    for (source, target, weight, norm, kind, kernel, key, run), other in visible:
        edge = Connection_(unit_ref(catalog, other, images), weight, norm, kind, kernel, urls.blob(key) if key else None)
        (inputs if target == unit_id else outputs).setdefault(edge.unit.layer, []).append(edge)
        group_notes[target == unit_id, edge.unit.layer] = notes.get(run)

    def grouped(direction: str, members: dict[str, list[Connection_]]) -> list[ConnectionGroup]:
        groups = []
        for name, edges in members.items():
            incoming = direction == "inputs"
            total = counts[incoming, name]
            more = urls.connections(model, layer, index, direction, name) if total > len(edges) else None
            groups.append(ConnectionGroup(
                name, catalog.models[model].layer(name).kind, "indirect" if edges[0].kind == "indirect" else "direct",
                edges, total, more, max(edge.norm for edge in edges), group_notes.get((incoming, name)),
            ))
        return sorted(groups, key=lambda g: (g.layer_kind == "branch", g.kind == "indirect", g.layer))

    return grouped("inputs", inputs), grouped("outputs", outputs)


def connections_page(catalog: Catalog, connection: Connection, model_name: str, layer_name: str, index: int,
                     direction: str, other: str) -> ConnectionsPage:
    """All of a unit's connections with ``other`` (its inputs from it, or its outputs to it)."""
    model = catalog.model(model_name)
    layer = model.layer(layer_name)
    unit_id = layer.unit_id(index)
    model.layer(other)  # an unknown layer is a typed 404 with suggestions
    if direction not in ("inputs", "outputs"):
        raise NotFound(f"connections are 'inputs' or 'outputs', not {direction!r}")
    inputs, outputs = _connections(connection, catalog, unit_id, cut=False)
    found = [group for group in (inputs if direction == "inputs" else outputs) if group.layer == other]
    if not found:
        raise NotFound(f"{model_name}/{layer_name}/{index} has no {direction} stored with {other}")
    ref = UnitRef(model_name, layer_name, index, layer.labels[index], urls.unit(model_name, layer_name, index), None)
    word = "from" if direction == "inputs" else "to"
    return ConnectionsPage(title=f"{model_name} / {layer_name} / {index}: {direction} {word} {other}", unit=ref,
                           direction=direction, group=found[0])


def _same_unit(catalog: Catalog, model: ModelEntry, layer: LayerEntry, index: int) -> tuple[str, int] | None:
    """A branch unit is also a unit of its block's output, and the other way round."""
    if layer.block is None or model.layer(layer.block).kind != "mixed":
        return None  # a residual block's output is a sum, not its branches side by side
    block = model.layer(layer.block)
    for name, start in model.concatenated(block):
        if layer.kind == "branch" and name == layer.name:
            return block.name, start + index
        if layer.kind == "mixed" and start <= index < start + model.layer(name).channels:
            return name, index - start
    return None


#: The kinds of layers whose units (or directions) can be ablated: those with a spatial output the next layers read.
ABLATABLE = ("conv", "mixed", "residual", *DERIVED_KINDS)


def unit_page(catalog: Catalog, connection: Connection, model_name: str, layer_name: str, index: int,
              renders: bool = True) -> UnitPage:
    model = catalog.model(model_name)
    layer = model.layer(layer_name)
    unit_id = layer.unit_id(index)
    artifacts = connection.execute(queries.artifacts, {"unit": unit_id}).all()
    by_technique = {technique: (key, objective, recipe) for technique, key, objective, recipe in artifacts}
    visualizations = [
        Visualization(t, urls.blob(by_technique[t][0]), by_technique[t][1], by_technique[t][2])
        for t in TECHNIQUES if t in by_technique
    ]
    examples = _examples(connection, catalog, unit_id)
    stats_row = connection.execute(queries.stats, {"unit": unit_id}).first()
    stats = None
    if stats_row is not None:
        params = _examples_params(connection)
        stats = {"images": stats_row.images, "mean_max": stats_row.mean_max, "active_fraction": stats_row.active_fraction,
                 "histogram": stats_row.histogram, "histogram_edges": params.get("histogram_edges"),
                 "dataset": stats_row.name, "preprocessing": params.get("input")}
    inputs, outputs = _connections(connection, catalog, unit_id)
    same = _same_unit(catalog, model, layer, index)
    same_ref = None
    if same is not None:
        same_id = model.layer(same[0]).unit_ids[same[1]]
        same_ref = unit_ref(catalog, same_id, pictures(connection, [same_id]))
    missing = []
    absent = [t for t in CORE_TECHNIQUES if t not in by_technique]
    if absent:
        missing.append(Missing(
            f"feature visualization ({', '.join(absent)})",
            f"microscope precompute vis --model {model_name} --layers {layer_name} --units {index} "
            f"--techniques {','.join(absent)}",
        ))
    if not examples:
        missing.append(Missing("dataset examples", f"microscope precompute examples --model {model_name} --layers {layer_name}"))
    derived = layer.kind in DERIVED_KINDS
    if not inputs and not outputs and not derived:  # a direction has no circuit weights of its own
        missing.append(Missing("circuit weights", f"microscope precompute circuits --model {model_name}"))
    runs = connection.execute(queries.labels_runs, {"model": model.id}).scalars()
    labelled = any(params.get("layer") == layer_name for params in runs)
    concepts = [Label(*row) for row in connection.execute(queries.labels, {"unit": unit_id})]
    if examples and not labelled:
        missing.append(Missing("concept labels", f"microscope precompute labels --model {model_name} --layers {layer_name}"))
    label = layer.labels[index]
    title = f"{model_name} / {layer_name} / {index}" + (f" ({label})" if label else "")
    placeholder = None
    if THUMBNAIL_TECHNIQUE not in by_technique:
        placeholder = next((e.crop_url for e in examples if e.kind == "top" and e.rank == 0), None)
    page = UnitPage(
        title=title,
        unit=UnitRef(model_name, layer_name, index, label, urls.unit(model_name, layer_name, index),
                     visualizations[0].image_url if visualizations else None, placeholder),
        json_url=urls.unit(model_name, layer_name, index, json=True),
        model_url=urls.model(model_name), layer_url=urls.layer(model_name, layer_name, index // UNITS_PER_PAGE + 1),
        layer_kind=layer.kind,
        previous_url=urls.unit(model_name, layer_name, index - 1) if index > 0 else None,
        next_url=urls.unit(model_name, layer_name, index + 1) if index + 1 < layer.channels else None,
        visualizations=visualizations,
        top_examples=[e for e in examples if e.kind == "top"],
        bottom_examples=[e for e in examples if e.kind == "bottom"],
        stats=stats, inputs=inputs, outputs=outputs, same_unit=same_ref, missing=missing,
        render_url=(urls.render(model_name, layer_name, index)
                    if renders and THUMBNAIL_TECHNIQUE not in by_technique else None),
        labels=concepts, labelled=labelled, tuning=unit_tuning(catalog, connection, model_name, layer_name, index),
        made_of=made_of(catalog, connection, unit_id) if derived else [],
        factorization=factorization(connection, model, layer) if derived else None,
        part_of=[] if derived else part_of(catalog, connection, model, unit_id),
        matches=matches(catalog, connection, unit_id),
        ablation=(ablation_view(None, connection, model_name, unit_target(layer_name, index, derived),
                                f"{layer_name}:{index}", urls.unit_ablation(model_name, layer_name, index), renders)
                  if layer.kind in ABLATABLE else None),
    )
    return replace(page, summary=summary(page))


def summary(page: UnitPage) -> UnitSummary:
    """The card at the top of a unit page: its clearest label, its most selective tuning family, how polysemantic
    it reads, its strongest input and output, and its ablation, each as the section below has it."""
    label = page.labels[0] if page.labels else None
    families = [family for family in (page.tuning.families if page.tuning else []) if family.family != "joint"]
    best = max(families, key=lambda family: family.selectivity, default=None)
    mixture = next((part for part in page.part_of if part.effective is not None), None)

    def strongest(groups: list[ConnectionGroup]) -> dict[str, Any] | None:
        edges = [edge for group in groups for edge in group.edges]
        edge = max(edges, key=lambda edge: edge.norm, default=None)
        if edge is None:
            return None
        return {"unit": f"{edge.unit.layer}:{edge.unit.index}", "label": edge.unit.concept or edge.unit.label,
                "url": edge.unit.url, "weight": round(edge.weight, 4)}

    zeroed = next((run for run in page.ablation.runs if run.mode == "zero" and run.figures), None) if page.ablation else None
    return UnitSummary(
        label={"name": label.name, "score": round(label.score, 3), "q": label.q} if label else None,
        tuning=({"family": best.family, "title": best.title, "selectivity": round(best.selectivity, 3),
                 "preferred": best.preferred} if best else None),
        polysemanticity=({"layer": mixture.layer, "features": mixture.features, "effective": mixture.effective}
                         if mixture else None),
        strongest_input=strongest(page.inputs), strongest_output=strongest(page.outputs),
        ablation=({"mode": "zero", "top1": zeroed.figures["top1"], "ablated_top1": zeroed.figures["ablated_top1"]}
                  if zeroed else None),
    )


def _examples_params(connection: Connection) -> dict[str, Any]:
    """The recipe of the latest finished examples run (histogram edges, preprocessing)."""
    return connection.execute(queries.examples_params).scalar() or {}


def example_page(catalog: Catalog, connection: Connection, model_name: str, layer_name: str, index: int,
                 kind: str, rank: int) -> ExamplePage:
    model = catalog.model(model_name)
    layer = model.layer(layer_name)
    unit_id = layer.unit_id(index)
    if not 0 <= rank < MAX_RANK:  # beyond any k, and beyond what the database's integers hold
        raise NotFound(f"{model_name}/{layer_name}/{index} has no {kind} example of rank {rank}")
    row = connection.execute(queries.example, {"unit": unit_id, "kind": kind, "rank": rank}).first()
    if row is None:
        raise NotFound(f"{model_name}/{layer_name}/{index} has no {kind} example of rank {rank}")
    activation, crop, y, x, path, thumbnail, dataset, width, height = row
    size = model.input_size
    in_input = model.field_layer(layer, index).position_box(y, x, size)
    left, top, right, bottom = Framing.of(width, height).to_original(in_input, size)
    box = (round(100 * left / width, 2), round(100 * top / height, 2),
           round(100 * (right - left) / width, 2), round(100 * (bottom - top) / height, 2))
    ref = UnitRef(model_name, layer_name, index, layer.labels[index], urls.unit(model_name, layer_name, index), None)
    example = Example(kind, rank, activation, path, urls.blob(crop),
                      urls.example(model_name, layer_name, index, kind, rank), y, x)
    return ExamplePage(title=f"{model_name} / {layer_name} / {index}: {kind} example {rank + 1}", unit=ref,
                       example=example, image_url=urls.blob(thumbnail), box=box, dataset=dataset)  # type: ignore[arg-type]
