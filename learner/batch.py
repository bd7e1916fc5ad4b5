"""A sampled batch as the update loop takes it: tensors over the received arrays, copied only where needed.

Kept apart from the replay client's socket work because it is the one place that decides what memory a
batch's tensors live in: the received frames themselves, a slot of the shared-memory batch file, or
pinned host memory on CUDA (so the copy to the device overlaps the update).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Batch:
    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    discount: torch.Tensor
    next_obs: torch.Tensor
    weight: torch.Tensor
    index: np.ndarray
    id: np.ndarray
    slot: int = -1  # the batch file slot these tensors are (CPU, shared memory), else -1
    shard: int = 0  # the replay shard it came from, which its new priorities go back to


def to_batch(arrays: Mapping[str, np.ndarray], *, pin_memory: bool, copy: bool) -> Batch:
    """Tensors over `arrays` without copying, or pinned copies; `copy` copies every array (a slot of the
    batch file to be freed at once) except those pinning copies anyway."""

    def array(name: str, pinned: bool = False) -> np.ndarray:
        a = arrays[name]
        if not a.flags.writeable or (copy and not pinned):
            a = a.copy()  # bytes (read-only; torch wants memory it may write), or a slot to free
        return a

    def tensor(name: str) -> torch.Tensor:
        t = torch.from_numpy(array(name, pinned=pin_memory))
        return t.pin_memory() if pin_memory else t

    return Batch(
        obs=tensor("obs"),
        action=tensor("action"),
        reward=tensor("reward"),
        discount=tensor("discount"),
        next_obs=tensor("next_obs"),
        weight=tensor("weight"),
        index=array("index"),
        id=array("id"),
    )
