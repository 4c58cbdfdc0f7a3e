"""What every model-running stage starts from: one `Stage` (store, network, weights digest, device, shard, progress).

The commands build it once (`precompute.cli`), the worker holds one, and a
cluster task opens one per shard (`precompute.running.cluster`); the stages take it
as their first argument instead of the six values one by one.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from app.core.store import Store
from app.core.zoo import ModelSpec
from precompute.models.base import Network


@dataclass(frozen=True)
class Stage:
    store: Store
    net: Network
    #: The weights' digest, recorded in every recipe that depends on them.
    weights_sha256: str
    device: torch.device
    #: This process's part (i, n) of the stage's deterministic work.
    shard: tuple[int, int] = (0, 1)
    #: Draw progress bars (tqdm, or Ray's inside a cluster task).
    progress: bool = True

    @property
    def spec(self) -> ModelSpec:
        return self.net.spec

    def part(self, shard: tuple[int, int]) -> Stage:
        return replace(self, shard=shard)

    def quiet(self) -> Stage:
        return replace(self, progress=False)
