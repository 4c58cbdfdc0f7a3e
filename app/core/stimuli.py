"""Parametric stimuli for tuning curves ("Zoom In"'s synthetic examples): the families, their axes and drawing.

Torch-free (numpy): the tuning stage draws a layer's stimuli in batches from
here, and the server redraws a unit's preferred stimulus from the same
recipe, so no stimulus image is stored.

Conventions (docs/artifacts.md and every tuning JSON state them): angles are in
degrees counterclockwise from the image's +x axis, with y pointing up. A
line's (and a grating's stripes') orientation is its direction, 0-180; an
edge's is the direction from its dark side to its light side, 0-360; a
curve's is the direction from its circle's centre to the arc's midpoint,
0-360, the midpoint lying on the receptive field's centre. Sizes are in
input pixels; a curve's radius and a grating's frequency are stored in
pixels and cycles per receptive field, and every stimulus is drawn inside a
disk as wide as the receptive field (its aperture), on mid-grey.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from itertools import product

import numpy as np

#: The background and the aperture's edge.
GREY = 0.5
CONVENTIONS = ("angles in degrees counterclockwise from the image's +x axis, y up; a line's or grating's orientation "
               "is its direction (0-180), an edge's the direction from dark to light (0-360), a curve's the direction "
               "from its circle's centre to the arc's midpoint (0-360), which lies on the receptive field's centre; "
               "stimuli are drawn inside a disk as wide as the receptive field, on mid-grey")
#: Curve radii and grating frequencies, relative to the receptive field's side.
RADII = (0.125, 0.25, 0.5, 1.0)
FREQUENCIES = (1.0, 2.0, 3.0, 4.0)
#: Phases a grating's response is pooled over (its largest: a complex cell's invariance).
PHASES = (0.0, 90.0, 180.0, 270.0)
#: An arc covers the receptive field's side in length, at most this many degrees of its circle.
MAX_ARC = 240.0


@dataclass(frozen=True)
class Axis:
    name: str
    values: tuple[float, ...]
    unit: str
    #: For an angle: 360 (a direction) or 180 (an orientation); 0 otherwise.
    period: int = 0


@dataclass(frozen=True)
class Family:
    name: str
    title: str
    #: The response array's axes, in order.
    axes: tuple[Axis, ...]
    #: Drawn over these values too and pooled by their largest response (a grating's phase).
    pooled: Axis | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(axis.values) for axis in self.axes)

    @property
    def angle(self) -> Axis:
        """The family's angle axis (the first): orientation, or hue for colours."""
        return self.axes[0]

    def params(self) -> list[dict[str, float]]:
        """Every drawn stimulus' parameters, the response array's order (pooled values innermost)."""
        axes = self.axes + ((self.pooled,) if self.pooled else ())
        return [dict(zip((axis.name for axis in axes), values)) for values in product(*(axis.values for axis in axes))]

    def describe(self) -> dict:
        return {"name": self.name, "title": self.title,
                "axes": [{"name": a.name, "values": list(a.values), "unit": a.unit} for a in self.axes],
                "pooled": {"name": self.pooled.name, "values": list(self.pooled.values), "by": "largest response"}
                if self.pooled else None}


def _angles(step: int, period: int) -> tuple[float, ...]:
    return tuple(float(angle) for angle in range(0, period, step))


#: Joint tuning ("Zoom In"): a unit's top examples rotated, every 15 degrees counterclockwise.
JOINT = "joint"
#: Joint tuning as Curve Detectors defines it: every member of the curve family (its most curve-selective units)
#: answering rotations of one unit's top examples, the family's most selective unit's.
FAMILY_JOINT = "joint_curves"
ROTATIONS = tuple(float(angle) for angle in range(0, 360, 15))
ROTATION = Axis("rotation", ROTATIONS, "degrees counterclockwise", 360)

POLARITY = Axis("polarity", (1.0, -1.0), "1: light on grey, -1: dark on grey")
FAMILIES: dict[str, Family] = {family.name: family for family in (
    Family("lines", "Lines", (Axis("orientation", _angles(15, 180), "degrees", 180), POLARITY)),
    Family("edges", "Edges", (Axis("orientation", _angles(15, 360), "degrees", 360),)),
    Family("curves", "Curves", (Axis("orientation", _angles(15, 360), "degrees", 360),
                                Axis("radius", RADII, "receptive fields"), POLARITY)),
    Family("gratings", "Gratings", (Axis("orientation", _angles(15, 180), "degrees", 180),
                                    Axis("frequency", FREQUENCIES, "cycles per receptive field")),
           pooled=Axis("phase", PHASES, "degrees")),
    Family("colours", "Colours", (Axis("hue", _angles(30, 360), "degrees", 360),
                                  Axis("saturation", (1 / 3, 2 / 3, 1.0), "fraction"),
                                  Axis("brightness", (1 / 3, 2 / 3, 1.0), "fraction"))),
)}
#: Every family the tuning stage computes, in order: the stimulus families, then joint tuning.
TUNING_FAMILIES = (*FAMILIES, JOINT)


@dataclass(frozen=True)
class Placement:
    """Where a layer's stimuli are drawn: the canvas fed to the network and the receptive field read.

    The canvas is the smallest square (at most the model's input) that holds
    the receptive field with a stride's margin; the unit read is the one at
    ``position`` (y = x), whose receptive field is centred on ``centre``.
    """

    canvas: int
    position: int
    centre: float
    #: The receptive field's side (the aperture's diameter), in input pixels.
    field: float
    #: Width of a drawn line or curve.
    stroke: float

    @classmethod
    def of(cls, receptive_field: int, stride: int, offset: int, input_size: int) -> Placement:
        canvas = min(input_size, receptive_field + 4 * stride)
        position = max(0, round((canvas / 2 - offset) / stride))
        centre = offset + position * stride
        field = float(min(receptive_field, input_size))
        return cls(canvas, position, float(centre), field, max(1.5, field / 24))

    def describe(self) -> dict:
        return {"canvas": self.canvas, "position": self.position, "centre": [self.centre, self.centre],
                "field": self.field, "stroke": round(self.stroke, 3)}

    @classmethod
    def described(cls, recipe: dict) -> Placement:
        """The placement a recipe's `describe` recorded (the server redraws stimuli from it)."""
        return cls(recipe["canvas"], recipe["position"], recipe["centre"][0], recipe["field"], recipe["stroke"])


def draw(family: Family, params: list[dict[str, float]], placement: Placement, canvas: int | None = None,
         centre: tuple[float, float] | None = None) -> np.ndarray:
    """The stimuli as float32 RGB in [0, 1], shape (n, size, size, 3): drawn at ``centre`` (x, y in pixels,
    default the placement's) on a ``canvas``-pixel square (default the placement's)."""
    size = canvas or placement.canvas
    cx, cy = centre if centre is not None else (placement.centre, placement.centre)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    # Pixel centres relative to the stimulus' centre, y up.
    dx, dy = xs + 0.5 - (cx + 0.5), (cy + 0.5) - (ys + 0.5)
    aperture = np.clip(placement.field / 2 - np.hypot(dx, dy) + 0.5, 0, 1)
    out = np.empty((len(params), size, size, 3), np.float32)
    for index, p in enumerate(params):
        out[index] = _draw_one(family.name, p, dx, dy, aperture, placement)
    return out


def _stroke(distance: np.ndarray, width: float) -> np.ndarray:
    """Coverage of a stroke of ``width`` pixels at each pixel's distance from its centre line (antialiased)."""
    return np.clip(width / 2 + 0.5 - distance, 0, 1)


def _draw_one(name: str, p: dict[str, float], dx: np.ndarray, dy: np.ndarray, aperture: np.ndarray,
              placement: Placement) -> np.ndarray:
    theta = math.radians(p.get("orientation", 0.0))
    cos, sin = math.cos(theta), math.sin(theta)
    if name == "lines":
        value = GREY + p["polarity"] * GREY * _stroke(np.abs(dx * sin - dy * cos), placement.stroke)
    elif name == "edges":
        value = np.clip(dx * cos + dy * sin + 0.5, 0, 1)
    elif name == "curves":
        radius = p["radius"] * placement.field
        # The circle's centre lies ``radius`` behind the receptive field's centre, so the arc's midpoint is on it.
        vx, vy = dx + radius * cos, dy + radius * sin
        ring = _stroke(np.abs(np.hypot(vx, vy) - radius), placement.stroke)
        span = min(MAX_ARC, math.degrees(placement.field / radius))
        off = np.abs((np.degrees(np.arctan2(vy, vx)) - math.degrees(theta) + 180) % 360 - 180)
        ends = np.clip((span / 2 - off) * math.radians(1) * radius + 0.5, 0, 1)
        value = GREY + p["polarity"] * GREY * ring * ends
    elif name == "gratings":
        along = (dx * -sin + dy * cos) / placement.field  # across the stripes, in receptive fields
        value = GREY + GREY * np.cos(2 * math.pi * p["frequency"] * along + math.radians(p["phase"]))
    elif name == "colours":
        rgb = colorsys.hsv_to_rgb(p["hue"] / 360, p["saturation"], p["brightness"])
        value = np.ones_like(dx)[..., None] * np.array(rgb, np.float32)
        return GREY + (value - GREY) * aperture[..., None]
    else:
        raise KeyError(name)
    return np.repeat((GREY + (value - GREY) * aperture)[..., None], 3, axis=2)
