"""What a stage leaves out of a network, and why, in one line each (issue 31).

The stages ask these functions before they run (a stage never meets a layer
it cannot use and stops with a traceback), and the catalog stores the same
lines, which `microscope info`, the model page and each layer page show: a
reader learns why a layer has no ablation or a model no tuning curves from
the rule that decided it.
"""

from __future__ import annotations

from app.core.errors import MicroscopeError
from app.core.zoo.spec import LayerSpec, ModelSpec

#: Stages that feed the network RGB images made or chosen for it: a network of other channel counts reads arrays.
RGB_STAGES = {
    "tuning": "tuning's stimuli (Gabors, curves, colours) are RGB images",
    "probes": "a probe's upload (its attribution maps, groups, caricatures, ablations) is an RGB image",
    "sanity": "the attribution sanity test reads RGB images",
    "universality": "matching units across networks feeds them the same RGB images",
}


def has_map(layer: LayerSpec) -> bool:
    """Whether ``layer``'s units have a spatial map (more than one position) of the network's own: what ablation,
    Grad-CAM and caricatures need."""
    return layer.kind not in ("linear", "logits") and layer.size > 1 and not layer.is_derived


def model_skips(spec: ModelSpec) -> dict[str, str]:
    """Stage (or page) → why ``spec``'s network gets none of it; empty where every stage applies."""
    notes: dict[str, str] = {}
    if spec.logits is None:
        notes["classes"] = ("no classifier (its output is a feature map): no class pages, no labels from classes, "
                            "no class targets in the attribution test")
    elif not spec.classes:
        notes["classes"] = "its outputs have no names (a names file's \"classes\"): labels from classes are left out"
    if spec.channels not in (1, 3):
        for stage, why in RGB_STAGES.items():
            notes[stage] = f"{why}, and this network reads {spec.channels} channels (.npy or TIFF arrays)"
    return notes


def layer_skips(layer: LayerSpec) -> dict[str, str]:
    """Stage → why it leaves ``layer`` out; empty where every stage that applies to the model applies to it."""
    notes: dict[str, str] = {}
    if layer.kind in ("linear", "logits"):
        notes["factors"] = "fully connected: NMF groups and dictionaries factor a spatial map"
    elif layer.is_derived:
        notes["factors"] = "its units are directions already (a factorization of its base layer)"
    if not has_map(layer):
        why = ("fully connected: no spatial map" if layer.kind in ("linear", "logits")
               else "a derived layer: ablate or attribute its base layer" if layer.is_derived
               else "a 1 x 1 map: no positions to tell apart")
        for stage in ("ablation", "grad-cam", "caricature"):
            notes[stage] = why
    return notes


def require(spec: ModelSpec, stage: str) -> None:
    """Stop, in one line, a stage that `model_skips` leaves out of ``spec``'s network."""
    note = model_skips(spec).get(stage)
    if note is not None:
        raise MicroscopeError(f"{spec.name} has no {stage}: {note}")
