"""Vectorized sum tree.

Proportional prioritized replay needs to draw items with probability
proportional to a mutable weight.  A sum tree makes both updating a weight and
drawing an item O(log n); doing every level as one numpy operation over the
whole batch keeps Python overhead at O(log n) per *batch* instead of per item.
"""

from __future__ import annotations

import numpy as np


class SumTree:
    """Binary sum tree over ``capacity`` non-negative float64 leaves.

    Layout: one flat array of length ``2 * n_leaves`` where ``n_leaves`` is the
    next power of two >= ``capacity``.  Node 1 is the root, node ``k`` has
    children ``2k`` and ``2k + 1``, and leaf ``i`` lives at ``n_leaves + i``.
    Padding leaves (``i >= capacity``) are always zero so they can never be
    selected.  Parents are always recomputed as the sum of their children
    (never adjusted by deltas), so rounding errors cannot accumulate over time.
    """

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, (int, np.integer)):
            raise ValueError(f"capacity must be an int, got {type(capacity).__name__}")
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self._capacity = int(capacity)
        n_leaves = 1
        while n_leaves < self._capacity:
            n_leaves *= 2
        self._n_leaves = n_leaves
        self._depth = n_leaves.bit_length() - 1
        self._tree = np.zeros(2 * n_leaves, dtype=np.float64)

    @property
    def capacity(self) -> int:
        """Number of usable leaves."""
        return self._capacity

    @property
    def total(self) -> float:
        """Sum of all leaf values (the root)."""
        return float(self._tree[1])

    def _check_indices(self, indices: np.ndarray) -> np.ndarray:
        idx = np.asarray(indices)
        if idx.size and not np.issubdtype(idx.dtype, np.integer):
            raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=False)
        if idx.size and (idx.min() < 0 or idx.max() >= self._capacity):
            raise ValueError(f"indices must lie in [0, {self._capacity})")
        return idx

    def get(self, indices: np.ndarray) -> np.ndarray:
        """Leaf values at ``indices`` (a copy, same shape as ``indices``)."""
        idx = self._check_indices(indices)
        return self._tree[idx + self._n_leaves]

    def values(self) -> np.ndarray:
        """Copy of all ``capacity`` leaf values, e.g. for snapshots."""
        start = self._n_leaves
        return self._tree[start : start + self._capacity].copy()

    def update(self, indices: np.ndarray, values: np.ndarray) -> None:
        """Set leaf values and refresh their ancestors.

        Duplicate indices within one call resolve to the last occurrence; this
        is done explicitly because numpy does not promise an order for
        repeated-index assignment.  Validation happens before any write.
        """
        idx = self._check_indices(indices).ravel()
        vals = np.asarray(values, dtype=np.float64)
        try:
            vals = np.broadcast_to(vals, np.shape(indices)).ravel()
        except ValueError as exc:
            raise ValueError(
                f"values shape {np.shape(values)} does not match indices shape {np.shape(indices)}"
            ) from exc
        if idx.size == 0:
            return
        if not np.all(np.isfinite(vals)):
            raise ValueError("sum tree values must be finite")
        if np.any(vals < 0):
            raise ValueError("sum tree values must be non-negative")

        # Last occurrence wins: unique over the reversed array picks, for each
        # index, its first position in reverse order == last in forward order.
        uniq, rev_pos = np.unique(idx[::-1], return_index=True)
        last_vals = vals[::-1][rev_pos]
        nodes = uniq + self._n_leaves
        self._tree[nodes] = last_vals

        tree = self._tree
        for _ in range(self._depth):
            nodes = nodes // 2
            # ``nodes`` stays sorted, so dropping adjacent duplicates is O(k).
            if nodes.size > 1:
                keep = np.empty(nodes.size, dtype=bool)
                keep[0] = True
                np.not_equal(nodes[1:], nodes[:-1], out=keep[1:])
                nodes = nodes[keep]
            tree[nodes] = tree[2 * nodes] + tree[2 * nodes + 1]

    def update_range(self, start: int, values: np.ndarray) -> None:
        """Set the contiguous leaves ``start .. start + len(values) - 1`` and refresh their ancestors.

        The replay ring always inserts into contiguous slots, and then every tree level is one slice
        operation instead of a sort and a gather: the insert path's hot spot.
        """
        vals = np.asarray(values, dtype=np.float64).ravel()
        end = start + vals.size
        if not 0 <= start <= end <= self._capacity:
            raise ValueError(f"leaf range [{start}, {end}) outside [0, {self._capacity})")
        if vals.size == 0:
            return
        if not np.all(np.isfinite(vals)) or np.any(vals < 0):
            raise ValueError("sum tree values must be finite and non-negative")
        tree = self._tree
        lo, hi = start + self._n_leaves, end - 1 + self._n_leaves
        tree[lo : hi + 1] = vals
        for _ in range(self._depth):
            lo, hi = lo // 2, hi // 2
            tree[lo : hi + 1] = tree[2 * lo : 2 * hi + 2 : 2] + tree[2 * lo + 1 : 2 * hi + 2 : 2]

    def find_prefix(self, targets: np.ndarray) -> np.ndarray:
        """Leaf ``i`` with ``prefix(i) <= target < prefix(i + 1)`` per target.

        Targets are clipped into ``[0, total]``.  The descent only ever enters
        a child whose subtree sum is positive, so even when rounding pushes a
        target to (or past) the total, the result is a positive-valued leaf
        below ``capacity``.  Raises ValueError if the tree is empty.
        """
        t = np.asarray(targets, dtype=np.float64)
        out_shape = t.shape
        t = t.ravel()
        if not np.all(np.isfinite(t)):
            raise ValueError("targets must be finite")
        total = self._tree[1]
        if not total > 0.0:
            raise ValueError("cannot search a sum tree whose total is zero")
        t = np.clip(t, 0.0, total)

        tree = self._tree
        node = np.ones(t.shape, dtype=np.int64)
        for _ in range(self._depth):
            left_child = 2 * node
            left = tree[left_child]
            right = tree[left_child + 1]
            # Go right only if the right subtree can actually hold mass; when
            # going left, either t < left (so left > 0) or right == 0 (so left
            # carries the whole positive parent sum).
            go_right = (t >= left) & (right > 0.0)
            t = np.where(go_right, t - left, t)
            node = left_child + go_right
        return (node - self._n_leaves).reshape(out_shape)
