"""Tuning plots as SVG, drawn by matplotlib when a page asks for one (cached: a row never changes under its run).

Every plot is readable without hovering: labelled axes, the preferred value
written on it. A radial tuning curve for the orientation families (an
orientation family, period 180, is drawn over the full circle: 0 and 180
degrees are one orientation), an orientation by radius heatmap for curves,
and the response against the rotation for joint tuning.
"""

from __future__ import annotations

import colorsys
import io
import threading
from functools import lru_cache

import matplotlib

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

import numpy as np  # noqa: E402

from app.core.stimuli import FAMILIES, FAMILY_JOINT, JOINT, ROTATIONS  # noqa: E402

#: Text stays text (smaller files, selectable); the page's font shows it.
matplotlib.rcParams.update({"svg.fonttype": "none", "font.size": 8, "axes.titlesize": 8})
#: Figure side in inches (at 100 dpi: 240 px); ``small`` plots are the family pages'.
SIDE = 2.4
SMALL = 1.3
INK, ACCENT, FAINT = "#222", "#c2410c", "#9ca3af"
#: matplotlib's text layout is not safe across threads (FastAPI runs sync views in a pool).
_lock = threading.Lock()


@lru_cache(maxsize=2048)
def tuning_svg(family: str, responses: str, preferred: str, small: bool = False) -> bytes:
    """The plot of one unit's ``family`` row; its arguments are the row's JSON (hashable, so cached)."""
    import json

    values, best = np.asarray(json.loads(responses), dtype=float), json.loads(preferred)
    with _lock:
        figure = Figure(figsize=(SMALL, SMALL) if small else (SIDE, SIDE), dpi=100)
        if family in (JOINT, FAMILY_JOINT):
            _joint(figure, values, best, small)
        elif family == "curves":
            _curves(figure, values, best, small)
        else:
            _radial(figure, family, values, best, small)
        out = io.BytesIO()
        figure.savefig(out, format="svg", bbox_inches="tight", pad_inches=0.03, metadata={"Date": None})
    return out.getvalue()


def _slice(family: str, values: np.ndarray, best: dict) -> np.ndarray:
    """The curve along the family's angle axis, every other axis at its preferred value."""
    axes = FAMILIES[family].axes
    index = tuple(slice(None) if n == 0 else list(axis.values).index(best[axis.name]) for n, axis in enumerate(axes))
    return values[index]


def _radial(figure: Figure, family: str, values: np.ndarray, best: dict, small: bool) -> None:
    axis = FAMILIES[family].angle
    curve = np.maximum(_slice(family, values, best), 0)
    angles = np.asarray(axis.values, dtype=float)
    if axis.period == 180:  # an orientation: the same at theta and theta + 180
        angles, curve = np.concatenate([angles, angles + 180]), np.concatenate([curve, curve])
    theta = np.radians(np.append(angles, angles[0] + 360))
    radius = np.append(curve, curve[0])
    ax = figure.add_subplot(projection="polar")
    colour = ACCENT
    if family == "colours":
        colour = colorsys.hsv_to_rgb(best["hue"] / 360, best["saturation"], best["brightness"])
        ax.scatter(np.radians(angles), curve, c=[colorsys.hsv_to_rgb(a / 360, 1, 1) for a in angles], s=8, zorder=3)
    ax.plot(theta, radius, color=colour, linewidth=1.2)
    ax.fill(theta, radius, color=colour, alpha=0.15)
    ax.set_ylim(0, max(float(curve.max()), 1e-6) * 1.05)
    ax.set_yticklabels([])
    ax.set_xticks(np.radians([0, 90, 180, 270]), ["0°", "90°", "180°", "270°"] if not small else ["0", "90", "", ""])
    ax.grid(color=FAINT, linewidth=0.4)
    if not small:
        name = axis.name
        others = ", ".join(f"{key} {_value(value)}" for key, value in best.items() if key != name)
        ax.set_title(f"preferred {name} {best[name]:g}°" + (f"\n{others}" if others else ""), color=INK)


def _curves(figure: Figure, values: np.ndarray, best: dict, small: bool) -> None:
    family = FAMILIES["curves"]
    polarity = list(family.axes[2].values).index(best["polarity"])
    grid = np.maximum(values[:, :, polarity], 0).T  # radius by orientation
    ax = figure.add_subplot()
    ax.imshow(grid, aspect="auto", cmap="magma", origin="lower", interpolation="nearest")
    orientations, radii = family.axes[0].values, family.axes[1].values
    ticks = list(range(0, len(orientations), 6))
    ax.set_xticks(ticks, [f"{orientations[t]:g}" for t in ticks])
    ax.set_yticks(range(len(radii)), [f"{r:g}" for r in radii])
    ax.plot(list(orientations).index(best["orientation"]), list(radii).index(best["radius"]), marker="o",
            markerfacecolor="none", markeredgecolor="#22d3ee", markersize=6)
    if not small:
        ax.set_xlabel("orientation (degrees)")
        ax.set_ylabel("radius (receptive fields)")
        ax.set_title(f"preferred {best['orientation']:g}°, radius {best['radius']:g}, "
                     f"{'light' if best['polarity'] > 0 else 'dark'}", color=INK)


def _joint(figure: Figure, values: np.ndarray, best: dict, small: bool) -> None:
    ax = figure.add_subplot()
    rotations = list(ROTATIONS)[:len(values)]
    ax.plot(rotations + [360], list(values) + [values[0]], color=ACCENT, linewidth=1.2, marker="o", markersize=2)
    ax.axhline(0, color=FAINT, linewidth=0.5)
    ax.axvline(best["rotation"], color=FAINT, linewidth=0.5, linestyle="--")
    ax.set_xticks([0, 90, 180, 270, 360])
    ax.set_xlim(0, 360)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    if not small:
        ax.set_xlabel("rotation of its top example (degrees)")
        ax.set_ylabel("response")
        ax.set_title(f"strongest at {best['rotation']:g}°", color=INK)


def _value(value: float) -> str:
    return f"{value:.2g}" if isinstance(value, float) and not value.is_integer() else f"{value:g}"


#: A colour per attribution method in the randomization plot; the controls dashed.
METHOD_COLOURS = {"gradient": "#1d4ed8", "integrated_gradients": "#047857", "grad_cam": "#c2410c",
                  "guided_backprop": "#6b7280", "guided_grad_cam": "#a855f7"}


@lru_cache(maxsize=64)
def sanity_svg(cascades: str, threshold: float) -> bytes:
    """The randomization test as Adebayo et al. draw it: per kind of target, each method's median Spearman correlation
    (shown maps) with its 95% interval against the cascade's steps, the judged step and the threshold marked; steps
    whose maps were mostly degenerate are gaps. ``cascades`` is the rows' JSON (hashable, so cached)."""
    import json

    rows = json.loads(cascades)
    kinds = sorted({row["target"] for row in rows}, key=["class", "unit"].index)
    with _lock:
        figure = Figure(figsize=(6.4, 2.6 * len(kinds)), dpi=100)
        for number, kind in enumerate(kinds):
            axes = figure.add_subplot(len(kinds), 1, number + 1)
            shown = [row for row in rows if row["target"] == kind]
            names = [step["randomized"] for step in shown[0]["steps"]]
            x = np.arange(len(names))
            for row in shown:
                figures = [(step["figures"] or {}).get("spearman") for step in row["steps"]]
                median = np.array([np.nan if f is None else f["median"] for f in figures])
                low = np.array([np.nan if f is None else f["low"] for f in figures])
                high = np.array([np.nan if f is None else f["high"] for f in figures])
                colour = METHOD_COLOURS.get(row["method"], INK)
                style = "--" if row["control"] else "-"
                axes.plot(x, median, style, color=colour, marker="o", markersize=2.5, label=row["label"], linewidth=1.2)
                axes.fill_between(x, low, high, color=colour, alpha=0.15, linewidth=0)
            judged = shown[0]["judged_step"] - 1
            axes.axvline(judged, color=FAINT, linewidth=0.8)
            axes.axhline(threshold, color=FAINT, linewidth=0.8, linestyle=":")
            axes.text(judged, -0.45, " judged here", color=FAINT, va="bottom", ha="left", fontsize=7)
            axes.set_ylim(-0.5, 1.05)
            axes.set_xticks(x, names, rotation=45, ha="right", fontsize=7)
            axes.set_ylabel("rank correlation")
            axes.set_title(f"target: each image's {'top class' if kind == 'class' else 'most active deep unit'}; "
                           "re-initialized down to ...", loc="left")
            axes.legend(fontsize=6.5, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
            axes.spines[["top", "right"]].set_visible(False)
        figure.tight_layout()
        out = io.BytesIO()
        figure.savefig(out, format="svg", bbox_inches="tight", pad_inches=0.03, metadata={"Date": None})
    return out.getvalue()
