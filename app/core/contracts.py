"""What both sides of the torch boundary must agree on, written once: the web server shows and queues what the
precompute side computes, so a constant or a key format written on both sides would drift apart."""

from __future__ import annotations

#: Ways an ablation removes units: set to zero, or to their mean over the dataset.
ABLATION_MODES = ("zero", "mean")
#: Units of a tuning family ablated together: its most selective (Curve Circuits ablates the curve detectors).
FAMILY_UNITS = 10
#: The colours of a probe's neuron groups' maps (Building Blocks shows six groups), in order of share, as RGB.
GROUP_COLOURS = ((230, 25, 75), (0, 130, 200), (60, 180, 75), (245, 130, 48), (145, 30, 180), (0, 170, 170))


def hex_colour(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def unit_target(layer: str, index: int, derived: bool) -> str:
    """The ablation target of one unit (``units:LAYER:I``), or of a derived layer's direction
    (``direction:DERIVED:I``)."""
    return f"direction:{layer}:{index}" if derived else f"units:{layer}:{index}"


def family_target(family: str, layer: str, count: int = FAMILY_UNITS) -> str:
    """The ablation target of a tuning family's ``count`` most selective units of ``layer``."""
    return f"family:{family}:{layer}:{count}"
