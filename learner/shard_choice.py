"""Which replay shard serves the next batch: shard k with probability mass_k / M.

Each shard samples its rows in proportion to their leaves `(p + eps)^alpha`, so a row it serves is item
i with probability `leaf_i / mass_k`. Asking shard k with probability `mass_k / M` (M: all live shards'
masses) makes every sampled row item i with probability `leaf_i / M`: the P(i) of one prioritized buffer
holding all of the shards' data. Its importance weights need no correction either: a shard normalizes
`(N_k P_k(i))^-beta` by the batch's largest, which cancels N_k and mass_k, leaving
`(leaf_i / min leaf)^-beta` over the batch, what the one buffer gives for the same rows.

A batch's rows come from one shard; a uniform choice (RLlib's Ape-X) would over-sample the rows of
shards with little mass. The masses are each shard's newest report (every batch and stats reply).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def choose_shard(masses: Sequence[float] | np.ndarray, rng: np.random.Generator) -> int | None:
    """The shard of the next batch, by mass; None when no shard has any (nothing can be sampled)."""
    m = np.asarray(masses, dtype=np.float64)
    m = np.where(np.isfinite(m) & (m > 0), m, 0.0)
    total = m.sum()
    if not total > 0:
        return None
    return int(np.searchsorted(np.cumsum(m), rng.random() * total, side="right").clip(0, m.size - 1))
