"""The version of the algorithm behind each stage's artifacts (torch-free: `microscope info` reads it).

A stage's recipe records its version, so a fix that changes how an artifact
is computed changes the recipe's digest: the stage recomputes what it had
stored, and `stale` finds what still predates the fix.

History:

- vis 2: the network sees the image at Lucid's scale (canvas ``size + 12``),
  grey beyond the padded image, Lucid's diversity objective exactly, the
  final objective under the optimized preprocessing (issue 9).
- vis 3: each image draws its random transforms from its own seed (they came from the
  batch's first seed), so a unit's image no longer depends on the batch it was rendered in
  and a unit rendered on demand equals the one `precompute vis` renders (issue 10).
- examples 2: short side resized and centre-cropped (no squashing), each
  branch's own receptive field, tiny and extreme images handled (issue 9).
- examples 3: equal activations rank the lower image first (they ranked in
  arrival order, so a shard or cluster run could differ from one process's
  where values tie, as a dead unit's constant logit does) (issue 12).
- circuits 2: edges ranked by the L2 norm of the expanded kernel, 50 per
  unit and direction, indirect inputs from the main layer two back (issue 9).
- vis 4: Lucid's redirected ReLU gradient where and when Lucid applies it: at every ReLU of the network (not only the
  objective's) and only during the first 17 steps (``global_step <= 16`` in ``redirected_relu_grad``), the plain
  gradient after (issue 30).
- factors 2: the dictionary's decoder bias starts at the geometric median, its AuxK loss is normalized by the
  residual's variance (openai/sparse_autoencoder), and a feature's activation (examples, labels, tuning) is read
  after top-k (issue 30).
- caricature 2: Lucid's recipe exactly where it says so: ``cossim_pow`` 0 (it was 1), the standard transforms then
  ``crop_or_pad_to`` the input size, at the input size (issue 30). Older caricatures are not shown and are made
  again when asked for.
- labels 2: a permutation null per label, Benjamini-Hochberg across the layer (issue 30).
- tuning 2: the selectivity read from the tuning curves alone (no drive factor; curves zero where a line wins), and
  the curve family's joint tuning as Curve Detectors defines it (issue 30).
- modules 2: Filan et al.'s protocol (L1 norms, arpack and k-means, isolated units removed, 100 shuffles, percentile
  and z-score) with the smooth control, and the whole network as one graph (issue 30).
- sanity 2: degenerate maps counted instead of scored 0, four figures with bootstrap intervals, per target kind,
  guided backprop and guided Grad-CAM as negative controls (issue 30).
- match 2: the position-wise correlation and the permutation null beside the pooled one (issue 30).
- probe 2: neuron groups, attributions, the framed image lossless.
- attribution 1, ablation 1: as first stored.
"""

from __future__ import annotations

from typing import Any

#: Every versioned artifact's algorithm, the one place it is bumped (a stage's registry entry reads its own).
ALGORITHMS: dict[str, int] = {"vis": 4, "examples": 3, "circuits": 2, "factors": 2, "caricature": 2, "labels": 2,
                              "tuning": 2, "modules": 2, "sanity": 2, "match": 2, "probe": 2, "attribution": 1,
                              "ablation": 1}


def is_stale(stage: str, recipe: dict[str, Any] | None) -> bool:
    """Whether ``recipe`` was made by an older algorithm than this code's for ``stage``."""
    return (recipe or {}).get("algorithm", 1) != ALGORITHMS[stage]
