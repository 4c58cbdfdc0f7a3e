#!/usr/bin/env python3
"""Derive app/core/zoo/imagenet_hierarchy.json from WordNet 3.0: the 1,000 ImageNet classes and every ancestor.

ImageNet's classes are WordNet 3.0 noun synsets (``n02084071`` is the noun
synset at byte offset 02084071 of ``data.noun``). Each synset keeps its first
lemma as its name and its hypernyms (``@``, and ``@i`` for instances) as its
parents, so a class reaches "entity" through every path WordNet gives.

Run once; the output is committed (no WordNet at run time). Needs Debian's
``wordnet-base`` (``apt-get install wordnet-base``) or ``--wordnet DIR`` with
``data.noun``:

    python scripts/imagenet_hierarchy.py [--wordnet /usr/share/wordnet]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLASSES = ROOT / "app" / "core" / "zoo" / "imagenet_classes.tsv"
OUTPUT = ROOT / "app" / "core" / "zoo" / "imagenet_hierarchy.json"


def read_synset(data: bytes, offset: int) -> tuple[str, list[str]]:
    """The synset at ``offset`` of ``data.noun``: its first lemma (spaces for underscores) and its hypernyms."""
    line = data[offset:data.index(b"\n", offset)].decode()
    fields = line.split(" ")
    if int(fields[0]) != offset:
        raise ValueError(f"data.noun has no synset at offset {offset}")
    words = int(fields[3], 16)
    name = fields[4].replace("_", " ")
    cursor = 4 + 2 * words
    pointers = int(fields[cursor])
    parents = []
    for number in range(pointers):
        symbol, target, kind = fields[cursor + 1 + 4 * number:cursor + 4 + 4 * number]
        if symbol in ("@", "@i") and kind == "n":
            parents.append(f"n{target}")
    return name, parents


def hierarchy(wordnet: Path) -> dict[str, object]:
    data = (wordnet / "data.noun").read_bytes()
    classes = [line.split("\t")[0] for line in CLASSES.read_text().splitlines() if line]
    synsets: dict[str, dict[str, object]] = {}
    todo = list(classes)
    while todo:
        wnid = todo.pop()
        if wnid in synsets:
            continue
        name, parents = read_synset(data, int(wnid[1:]))
        synsets[wnid] = {"name": name, "parents": parents}
        todo.extend(parents)
    return {
        "source": "WordNet 3.0 (Princeton), data.noun: first lemma and hypernyms (@, @i) of each synset",
        "made_by": "scripts/imagenet_hierarchy.py",
        "classes": classes,
        "synsets": dict(sorted(synsets.items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--output", type=Path, default=OUTPUT)
    arguments = parser.parse_args()
    made = hierarchy(arguments.wordnet)
    arguments.output.write_text(json.dumps(made, indent=0, sort_keys=False) + "\n")
    print(f"{arguments.output}: {len(made['classes'])} classes, {len(made['synsets'])} synsets")


if __name__ == "__main__":
    main()
