"""What the tuning stage stored, as pages: a unit's Tuning section, a layer's family pages, plots and stimuli.

A unit's section lists each family's preferred parameters and selectivity
figures, with its plot (`app.plots`) and its preferred stimulus, which the
server redraws from the stored recipe (`app.core.stimuli`: the stage stores no
stimulus image). A family page ranks a layer's units by selectivity to one
family and lays the most selective out on a circle by their preferred
orientation (the Curve Detectors article's figure of the curve family).
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import Connection

from app import queries, urls
from app.ablation import ablation_view
from app.core.contracts import FAMILY_UNITS, family_target
from app.catalog import Catalog, LayerEntry
from app.core.errors import NotFound
from app.page_types import FamilyPage, FamilyUnit, Tuning, TuningSection
from app.refs import pictures
from app.core.stimuli import CONVENTIONS, FAMILIES, FAMILY_JOINT, JOINT, ROTATION, Placement, draw

#: Every family a page may name, in the order the unit page shows them.
FAMILY_NAMES = ("curves", "lines", "edges", "gratings", "colours", JOINT, FAMILY_JOINT)
TITLES = {**{name: family.title for name, family in FAMILIES.items()}, JOINT: "Joint tuning (its top example, rotated)",
          FAMILY_JOINT: "Joint tuning of the curve family (the family's top unit's examples, rotated)"}
#: Families whose axis is the rotation of dataset examples (no stimulus to draw).
ROTATED = (JOINT, FAMILY_JOINT)
#: Units laid out on a family page's circle (the rest are in its table).
ON_CIRCLE = 48
#: Side of a drawn preferred stimulus, in pixels.
STIMULUS_SIDE = 96


SELECTIVITY = ("the orientation selectivity index of the tuning curve at the preferred other parameters: (R_pref - "
               "R_orth) / (R_pref + R_orth), R_orth at the preferred orientation plus and minus 90 degrees (colours: "
               "the resultant length over hues); for curves, zero for a unit that answers some line at least as "
               "strongly as its best curve; joint tuning: the resultant length over rotations")


def _axes(family: str) -> list[dict[str, Any]]:
    if family in ROTATED:
        return [{"name": ROTATION.name, "values": list(ROTATION.values), "unit": ROTATION.unit}]
    return FAMILIES[family].describe()["axes"]


def _check_family(family: str) -> None:
    if family not in FAMILY_NAMES:
        import difflib

        raise NotFound(f"no tuning family {family!r} (families: {', '.join(FAMILY_NAMES)})",
                       tuple(difflib.get_close_matches(family, FAMILY_NAMES, n=2, cutoff=0.5)))


def unit_tuning(catalog: Catalog, connection: Connection, model: str, layer: str, index: int) -> TuningSection:
    """A unit's Tuning section (every family the stage stored for it)."""
    entry = catalog.model(model).layer(layer)
    rows = connection.execute(queries.tuning, {"unit": entry.unit_id(index)}).all()
    if not rows:
        return TuningSection(False, command=f"microscope precompute tuning --model {model} --layers {layer}")
    order = {name: n for n, name in enumerate(FAMILY_NAMES)}
    families = [
        Tuning(family, TITLES[family], preferred, figures, selectivity, responses, _axes(family),
               urls.tuning_plot(model, layer, index, family),
               urls.tuning_stimulus(model, layer, index, family) if family not in ROTATED else None,
               urls.tuning_family(model, layer, family))
        for family, responses, preferred, figures, selectivity, _ in sorted(rows, key=lambda row: order.get(row.family, 99))
    ]
    recipe = connection.execute(queries.run_recipe, {"run": rows[0].run_id}).scalar() or {}
    return TuningSection(True, families, placement=_placement(recipe, index))


def layer_families(connection: Connection, model: str, layer: LayerEntry) -> dict[str, str]:
    """The family pages of a layer, by family (its first unit's rows stand for the layer: one run writes them all)."""
    stored = set(connection.execute(queries.tuned_families, {"unit": layer.unit_ids[0]}).scalars()) if layer.unit_ids else set()
    return {name: urls.tuning_family(model, layer.name, name) for name in FAMILY_NAMES if name in stored}


def family_page(catalog: Catalog, connection: Connection, model: str, layer: str, family: str) -> FamilyPage:
    _check_family(family)
    entry = catalog.model(model).layer(layer)
    by_id = {unit_id: index for index, unit_id in enumerate(entry.unit_ids)}
    rows = connection.execute(queries.family, {"ids": list(entry.unit_ids), "family": family}).all()
    if not rows:
        raise NotFound(f"{model}/{layer} has no {family} tuning yet: "
                       f"microscope precompute tuning --model {model} --layers {layer}")
    shown = pictures(connection, [row.unit_id for row in rows[:ON_CIRCLE]])
    angle = _axes(family)[0]["name"]
    places = _circle([row.preferred[angle] for row in rows[:ON_CIRCLE]], 360 if family not in ("lines", "gratings") else 180)
    units = [
        FamilyUnit(by_id[unit_id], urls.unit(model, layer, by_id[unit_id]),
                   shown.images.get(unit_id), shown.placeholders.get(unit_id), entry.labels[by_id[unit_id]],
                   selectivity, preferred, figures, urls.tuning_plot(model, layer, by_id[unit_id], family, small=True),
                   urls.tuning_stimulus(model, layer, by_id[unit_id], family) if family not in ROTATED else None,
                   places[rank] if rank < len(places) else None)
        for rank, (unit_id, preferred, figures, selectivity, _) in enumerate(rows)
    ]
    return FamilyPage(
        title=f"{model} / {layer} / {TITLES[family]}", model=model, layer=layer,
        family={"name": family, "title": TITLES[family], "axes": _axes(family)}, conventions=CONVENTIONS,
        units=units, model_url=urls.model(model), layer_url=urls.layer(model, layer),
        json_url=urls.tuning_family(model, layer, family, json=True),
        families={name: urls.tuning_family(model, layer, name) for name in FAMILY_NAMES if name != FAMILY_JOINT}
        | ({FAMILY_JOINT: urls.tuning_family(model, layer, FAMILY_JOINT)} if family == FAMILY_JOINT else {}),
        selectivity=SELECTIVITY,
        ablation=ablation_view(None, connection, model, family_target(family, layer),
                               f"the {FAMILY_UNITS} most {family}-selective units of {layer}",
                               urls.family_ablation(model, layer, family)) if units else None,
    )


def _circle(angles: list[float], period: int) -> list[tuple[float, float]]:
    """Places on a circle (percent of a square box, y down) at each angle (y up); units that share an angle
    go on successive rings."""
    seen: dict[float, int] = {}
    places = []
    for angle in angles:
        ring = seen.get(angle, 0)
        seen[angle] = ring + 1
        # Four rings inwards; a fifth unit of one angle goes back out, a few degrees aside.
        theta = math.radians(angle * 360 / period + 6 * (ring // 4))
        radius = 44 - 10 * (ring % 4)
        places.append((round(50 + radius * math.cos(theta), 2), round(50 - radius * math.sin(theta), 2)))
    return places


def _placement(recipe: dict[str, Any], index: int) -> dict[str, Any] | None:
    """Where the tuning run drew unit ``index``'s stimuli (a block output's unit has its branch's field)."""
    return next((dict(p) for p in recipe.get("placements", []) if p["units"][0] <= index < p["units"][1]), None)


def _row(catalog: Catalog, connection: Connection, model: str, layer: str, index: int, family: str) -> Any:
    _check_family(family)
    entry = catalog.model(model).layer(layer)
    row = connection.execute(queries.tuning_row, {"unit": entry.unit_id(index), "family": family}).first()
    if row is None:
        raise NotFound(f"{model}/{layer}/{index} has no {family} tuning yet")
    return row


def plot(catalog: Catalog, connection: Connection, model: str, layer: str, index: int, family: str,
         small: bool) -> tuple[bytes, str]:
    """The SVG of a unit's ``family`` plot, and its ETag (its run's: a row never changes under its run)."""
    from app.plots import tuning_svg  # matplotlib: loaded with the first plot, not with the server

    responses, preferred, _, run_id = _row(catalog, connection, model, layer, index, family)
    svg = tuning_svg(family, json.dumps(responses), json.dumps(preferred, sort_keys=True), small)
    return svg, f'"{run_id}-{family}-{index}-{int(small)}"'


def stimulus(catalog: Catalog, connection: Connection, model: str, layer: str, index: int, family: str) -> tuple[bytes, str]:
    """A unit's preferred stimulus of ``family`` as PNG, drawn from the recipe of the run that found it."""
    if family in ROTATED:
        raise NotFound("joint tuning's stimulus is a top dataset example, rotated (see the unit's dataset examples)")
    _, preferred, _, run_id = _row(catalog, connection, model, layer, index, family)
    recipe = connection.execute(queries.run_recipe, {"run": run_id}).scalar() or {}
    drawn = _placement(recipe, index)
    if drawn is None:
        raise NotFound(f"the tuning run of {model}/{layer} does not say where unit {index}'s stimuli were drawn")
    where = Placement.described(drawn)
    kind = FAMILIES[family]
    params = dict(preferred)
    if kind.pooled is not None:  # the phase a grating was pooled over: draw its first
        params[kind.pooled.name] = kind.pooled.values[0]
    pixels = draw(kind, [params], where)[0]
    image = Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))
    image = image.resize((STIMULUS_SIDE, STIMULUS_SIDE), Image.Resampling.NEAREST if where.canvas < STIMULUS_SIDE
                         else Image.Resampling.LANCZOS)
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=True)
    return out.getvalue(), f'"{run_id}-{family}-{index}-stimulus"'
