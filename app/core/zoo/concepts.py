"""Concept labels: what the classes of a unit's top dataset examples share, through the WordNet hierarchy.

A concept is an ImageNet class or any of its WordNet 3.0 ancestors ("dog",
"bird", "wheeled vehicle"); the hierarchy is data (``imagenet_hierarchy.json``,
made once by ``scripts/imagenet_hierarchy.py``). For a unit's top examples
whose image has a known class (``n`` of them), a concept that ``count`` of them
fall under is scored by two numbers a reader can check:

- ``coverage`` = count / n, the share of the top examples it covers;
- ``lift`` = coverage / base rate, how many times more often than among all the
  dataset's images (the base rate) it appears;

and ranked by ``score`` = coverage x log2(lift): bits of evidence, high for a
concept both specific and covering (30 of 40 golden retrievers beats 40 of 40
"dogs", which beats 40 of 40 "organisms").

A label is clear when it covers at least `MIN_COUNT` examples and
`MIN_COVERAGE` of them, at `MIN_LIFT` times its base rate, and chance does not
explain it: its permutation p-value (random sets of as many distinct dataset
images), adjusted by Benjamini-Hochberg across every unit and concept of the
layer, is below `ALPHA`. A unit without one has "no clear concept". Up to `LABELS` labels are kept, best first, none
an ancestor or descendant of one kept before it (so "dog" is not followed by
"canine" and "carnivore"). Torch-free: the server and the stage share it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path

import numpy as np

HIERARCHY_FILE = Path(__file__).with_name("imagenet_hierarchy.json")
#: The rules (stored in each labels run's recipe).
LABELS = 3
MIN_COUNT = 4
MIN_COVERAGE = 0.3
MIN_LIFT = 2.0
#: A label is clear only when its adjusted p-value (Benjamini-Hochberg across the layer's units and concepts) is below.
ALPHA = 0.05
_SYNSET = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class Label:
    """A concept shared by a unit's top examples: ``count`` of ``of`` of them fall under it (``coverage``), ``lift``
    times as often as among all the dataset's images (``base_rate``); ``score`` is coverage x log2(lift).
    Also what unit pages show (their JSON)."""

    concept: str
    name: str
    count: int
    #: Top examples with a known class.
    of: int
    coverage: float
    base_rate: float
    lift: float
    score: float
    #: The chance that as many random distinct dataset images put as many under the concept (permutation null), and
    #: that chance adjusted by Benjamini-Hochberg across the layer's units and concepts (None where not computed).
    p: float | None = None
    q: float | None = None


class Hierarchy:
    def __init__(self, synsets: dict[str, dict], classes: list[str], digest: str) -> None:
        self.names = {wnid: entry["name"] for wnid, entry in synsets.items()}
        self.parents = {wnid: entry["parents"] for wnid, entry in synsets.items()}
        self.classes = classes
        #: The file's sha256 (part of the labels' recipe).
        self.digest = digest

    @classmethod
    @cache
    def load(cls, path: Path = HIERARCHY_FILE) -> Hierarchy:
        data = path.read_bytes()
        made = json.loads(data)
        return cls(made["synsets"], made["classes"], hashlib.sha256(data).hexdigest())

    @classmethod
    def flat(cls, classes: Iterable[str]) -> Hierarchy:
        """Classes with no hierarchy (a dataset whose folders are not WordNet synsets): each class its own concept."""
        names = sorted(set(classes))
        return cls({name: {"name": name, "parents": []} for name in names}, names,
                   hashlib.sha256("\n".join(names).encode()).hexdigest())

    @cache  # noqa: B019 - one hierarchy per process, loaded once
    def ancestors(self, wnid: str) -> frozenset[str]:
        """``wnid`` and every synset above it."""
        found = {wnid}
        for parent in self.parents.get(wnid, []):
            found |= self.ancestors(parent)
        return frozenset(found)

    def concept_counts(self, classes: Iterable[str]) -> Counter[str]:
        """How many of ``classes`` (one per image) fall under each concept; unknown classes count nowhere."""
        counts: Counter[str] = Counter()
        for wnid in classes:
            if wnid in self.parents:
                counts.update(self.ancestors(wnid))
        return counts

    def under(self, name: str) -> set[str]:
        """Every synset that is a concept named ``name`` (any case; "crane" names two) or lies under one."""
        named = {wnid for wnid, concept in self.names.items() if concept.lower() == name.lower()}
        return {wnid for wnid in self.names if self.ancestors(wnid) & named} if named else set()

    def knows(self, wnid: str | None) -> bool:
        return wnid is not None and wnid in self.parents


def image_class(path: str, any_folder: bool = False) -> str | None:
    """The ImageNet class (WordNet synset) an image's path names by its first folder, if any; with ``any_folder``,
    whatever the first folder is called (a dataset of one's own classes)."""
    head = path.split("/", 1)[0]
    return head if "/" in path and (any_folder or _SYNSET.match(head)) else None


def candidates(top_classes: list[str | None], base: Counter[str], images: int, hierarchy: Hierarchy) -> list[Label]:
    """Every concept at least one of a unit's top examples falls under, scored, with its permutation p-value: the chance
    that as many distinct dataset images, drawn at random, put at least as many under the concept. For one concept the
    score rises with that count, so the permutation distribution of the score is the count's hypergeometric one
    (``images`` known images, ``base[concept]`` under the concept, as many drawn as there are known top examples),
    computed exactly rather than sampled."""
    from scipy.stats import hypergeom

    known = [wnid for wnid in top_classes if hierarchy.knows(wnid)]
    if not known or not images:
        return []
    counts = hierarchy.concept_counts(known)
    concepts = list(counts)
    drawn = np.array([counts[c] for c in concepts])
    present = np.minimum(np.array([base[c] for c in concepts]), images)
    p_values = hypergeom.sf(drawn - 1, images, present, len(known))  # one vectorized call per unit
    found = []
    for concept, count, under, p in zip(concepts, drawn.tolist(), present.tolist(), p_values.tolist()):
        coverage, rate = count / len(known), under / images
        lift = coverage / rate if rate else math.inf
        found.append(Label(concept, hierarchy.names[concept], count, len(known), round(coverage, 4), round(rate, 5),
                           round(lift, 3), round(coverage * math.log2(lift), 4), float(p) if rate else 0.0, None))
    return found


def clear(label: Label) -> bool:
    """The effect-size rules: at least `MIN_COUNT` examples, `MIN_COVERAGE` of them, `MIN_LIFT` times the base rate."""
    return label.count >= MIN_COUNT and label.coverage >= MIN_COVERAGE and label.lift >= MIN_LIFT


def label_layer(units: dict[int, list[str | None]], base: Counter[str], images: int, hierarchy: Hierarchy,
                alpha: float | None = ALPHA) -> dict[int, list[Label]]:
    """Up to `LABELS` clear labels of each unit of one layer (by id: its top examples' classes, None unknown).

    Every (unit, concept) pair is one test, for each concept with images in the dataset; Benjamini-Hochberg across all of them gives each
    its adjusted p-value ``q``, and a label is clear only when ``q`` is below ``alpha`` and it meets the effect-size
    rules (`clear`). ``alpha`` None applies the effect-size rules alone (the labels before the null; for comparison)."""
    from scipy.stats import false_discovery_control

    tested = {unit: candidates(classes, base, images, hierarchy) for unit, classes in units.items()}
    flat = [candidate for found in tested.values() for candidate in found]
    # Every concept with images in the dataset is a test for every unit, not only those its examples fall under
    # (choosing the tests by what was seen would make their p-values small by construction); the others have p = 1.
    family = sum(1 for concept in base if base[concept]) * len(units)
    padded = [c.p for c in flat] + [1.0] * max(0, family - len(flat))
    adjusted = false_discovery_control(padded, method="bh") if flat else []
    q = iter(float(value) for value in adjusted[:len(flat)])
    out = {}
    for unit, found in tested.items():
        with_q = [replace(candidate, p=round(candidate.p, 6), q=round(next(q), 6)) for candidate in found]
        kept = [c for c in with_q if clear(c) and (alpha is None or c.q < alpha)]
        out[unit] = _distinct(kept, hierarchy)
    return out


def label(top_classes: list[str | None], base: Counter[str], images: int, hierarchy: Hierarchy,
          alpha: float | None = ALPHA) -> list[Label]:
    """The clear labels of one unit alone (its concepts the only tests corrected for; a layer is `label_layer`)."""
    return label_layer({0: top_classes}, base, images, hierarchy, alpha)[0]


def _distinct(kept: list[Label], hierarchy: Hierarchy) -> list[Label]:
    chosen: list[Label] = []
    # Equal evidence names the most specific concept (the deepest: "golden retriever", not "mammal").
    for candidate in sorted(kept, key=lambda c: (-c.score, -len(hierarchy.ancestors(c.concept)), c.concept)):
        related = any(candidate.concept in hierarchy.ancestors(kept.concept) or
                      kept.concept in hierarchy.ancestors(candidate.concept) for kept in chosen)
        if not related:
            chosen.append(candidate)
        if len(chosen) == LABELS:
            break
    return chosen


def rules() -> dict[str, object]:
    return {"labels": LABELS, "min_count": MIN_COUNT, "min_coverage": MIN_COVERAGE, "min_lift": MIN_LIFT,
            "score": "coverage * log2(lift)", "alpha": ALPHA,
            "null": "permutation: random sets of as many distinct dataset images (exact, hypergeometric); "
                    "Benjamini-Hochberg across every (unit, concept) pair of the layer, every concept with images in "
                    "the dataset counted", "hierarchy_sha256": Hierarchy.load().digest}
