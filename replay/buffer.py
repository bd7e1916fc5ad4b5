"""Preallocated replay storage with ring eviction and proportional prioritization.

Ape-X replay servers hold millions of transitions and serve large batches, so
storage is one preallocated array per field and every hot path (add, sample,
priority update) is a handful of vectorized numpy operations.  Prioritization
follows Schaul et al. (2016), "Prioritized Experience Replay", proportional
variant with stratified sampling.  What each call accepts is checked in
``replay.buffer_inputs``, and snapshots in ``replay.buffer_state``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from replay.buffer_inputs import FieldSpec, check_batch, check_priorities, check_update, is_int
from replay.buffer_state import DATA_PREFIX, check_state, encode_pcg64
from replay.sum_tree import SumTree


@dataclass(frozen=True)
class SampleResult:
    """A sampled batch plus what the learner needs to send priorities back.

    ``indices`` and ``ids`` together identify each sampled transition so that
    a later ``update_priorities`` can detect slots overwritten meanwhile.
    """

    indices: np.ndarray
    ids: np.ndarray
    weights: np.ndarray
    data: dict[str, np.ndarray]


class ReplayBuffer:
    """Fixed-capacity transition store, evicting the oldest insert first.

    Every insert gets a unique, monotonically increasing id (counting all
    inserts ever made, including ones immediately evicted), which lets stale
    priority updates for overwritten slots be recognised and dropped.

    The stored transitions are always the ``size`` newest inserts, in the
    ring slots just before ``cursor``.  Besides the ring overwriting the
    oldest, a caller whose own storage runs out first (the frame ring of
    ``replay.frame_storage``) can drop the oldest early with ``evict_oldest``;
    a dropped slot gets id -1 and zero priority, so it is never sampled and
    updates for it count as stale.

    With ``prioritized=True`` slot ``i`` is sampled with probability
    ``(p_i + eps)^alpha / sum_j (p_j + eps)^alpha`` where ``p_i`` is the raw
    priority (e.g. |TD error|).  ``alpha`` is restricted to ``[0, 1]`` and
    ``priority_eps`` to be positive so every stored transition keeps a strictly
    positive, finite sampling weight.
    """

    def __init__(
        self,
        capacity: int,
        fields: Mapping[str, FieldSpec],
        *,
        prioritized: bool = True,
        alpha: float = 0.6,
        priority_eps: float = 1e-6,
        seed: int | None = None,
    ) -> None:
        if not is_int(capacity) or capacity < 1:
            raise ValueError(f"capacity must be a positive int, got {capacity!r}")
        if not isinstance(fields, Mapping) or len(fields) == 0:
            raise ValueError("fields must be a non-empty mapping of name -> FieldSpec")
        for name, spec in fields.items():
            if not isinstance(name, str) or not name:
                raise ValueError(f"field names must be non-empty strings, got {name!r}")
            if not isinstance(spec, FieldSpec):
                raise ValueError(f"field {name!r}: expected FieldSpec, got {type(spec).__name__}")
        if not isinstance(prioritized, bool):
            raise ValueError(f"prioritized must be a bool, got {prioritized!r}")
        alpha = float(alpha)
        if not (0.0 <= alpha <= 1.0):
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        priority_eps = float(priority_eps)
        if not (np.isfinite(priority_eps) and priority_eps > 0.0):
            raise ValueError(f"priority_eps must be positive and finite, got {priority_eps}")
        if seed is not None and (not is_int(seed) or seed < 0):
            raise ValueError(f"seed must be a non-negative int or None, got {seed!r}")

        self._capacity = int(capacity)
        self._fields: dict[str, FieldSpec] = dict(fields)
        self._prioritized = prioritized
        self._alpha = alpha
        self._eps = priority_eps
        self._rng = np.random.Generator(np.random.PCG64(seed))

        self._data: dict[str, np.ndarray] = {
            name: np.zeros((self._capacity, *spec.shape), dtype=spec.dtype) for name, spec in self._fields.items()
        }
        self._ids = np.full(self._capacity, -1, dtype=np.int64)
        self._tree = SumTree(self._capacity) if prioritized else None
        self._cursor = 0
        self._size = 0
        self._inserted_total = 0
        self._sampled_total = 0
        self._stale_updates = 0
        self._max_priority = 1.0

    # ------------------------------------------------------------------ info
    @property
    def capacity(self) -> int:
        """Maximum number of stored transitions."""
        return self._capacity

    @property
    def size(self) -> int:
        """Number of transitions currently stored."""
        return self._size

    def __len__(self) -> int:
        return self._size

    @property
    def fields(self) -> dict[str, FieldSpec]:
        """Copy of the field specs this buffer stores."""
        return dict(self._fields)

    @property
    def prioritized(self) -> bool:
        """Whether sampling is proportional to priority (else uniform)."""
        return self._prioritized

    @property
    def cursor(self) -> int:
        """Slot the next insert goes to; the oldest stored one is ``(cursor - size) % capacity``."""
        return self._cursor

    @property
    def nbytes(self) -> int:
        """Bytes of the preallocated storage: fields, ids and the sum tree (2 float64 per power-of-two leaf)."""
        tree = 0
        if self._tree is not None:
            tree = 16 * (1 << max(self._capacity - 1, 0).bit_length())
        return sum(arr.nbytes for arr in self._data.values()) + self._ids.nbytes + tree

    @property
    def ids(self) -> np.ndarray:
        """Read-only view of per-slot insert ids (-1 for empty slots: never written or evicted early)."""
        view = self._ids.view()
        view.flags.writeable = False
        return view

    @property
    def inserted_total(self) -> int:
        """Transitions ever passed to ``add`` (including ones evicted at once)."""
        return self._inserted_total

    @property
    def sampled_total(self) -> int:
        """Transitions handed out by ``sample`` so far."""
        return self._sampled_total

    @property
    def stale_priority_updates(self) -> int:
        """Priority updates dropped because their slot had been overwritten."""
        return self._stale_updates

    @property
    def max_priority(self) -> float:
        """Largest raw priority seen; default for inserts without priorities."""
        return self._max_priority

    @property
    def mass(self) -> float:
        """Sum of the stored leaves (p + eps)^alpha (the size when uniform): the odds a learner sampling
        several shards gives this buffer (common/shards.py)."""
        return float(self._tree.total) if self._tree is not None else float(self._size)

    def _leaf_values(self, raw: np.ndarray) -> np.ndarray:
        return (raw + self._eps) ** self._alpha

    # ------------------------------------------------------------------- add
    def add(self, batch: Mapping[str, np.ndarray], priorities: np.ndarray | None = None) -> np.ndarray:
        """Insert B transitions; return the slots of the ones kept.

        If B > capacity only the last ``capacity`` rows are stored (as if
        inserted one by one), but all B count as inserted and consume ids.
        The returned int64 slots align with ``batch[...][-len(slots):]``.
        Everything is validated before anything is written.
        """
        arrays, n = check_batch(self._fields, batch)

        leaf: np.ndarray | None = None
        raw: np.ndarray | None = None
        if priorities is not None:
            raw = check_priorities(priorities, n, "priorities")
        if n == 0:
            return np.empty(0, dtype=np.int64)

        kept = min(n, self._capacity)
        offset = n - kept
        if self._tree is not None:
            if raw is None:
                leaf = np.full(kept, self._leaf_values(np.float64(self._max_priority)))
            else:
                leaf = self._leaf_values(raw[offset:])

        # Row j of the batch goes where a one-by-one insert would put it: contiguous ring slots, in at
        # most two runs (before and after the wrap), each written with slices rather than gathers.
        rows = np.arange(offset, n, dtype=np.int64)
        slots = (self._cursor + rows) % self._capacity
        start = int(slots[0])
        first = min(kept, self._capacity - start)
        for dst, src, length in ((start, 0, first), (0, first, kept - first)):
            if length == 0:
                continue
            for name, arr in arrays.items():
                self._data[name][dst : dst + length] = arr[offset + src : offset + src + length]
            self._ids[dst : dst + length] = self._inserted_total + rows[src : src + length]
            if self._tree is not None:
                assert leaf is not None
                self._tree.update_range(dst, leaf[src : src + length])
        if raw is not None:
            self._max_priority = max(self._max_priority, float(raw.max()))

        self._cursor = (self._cursor + n) % self._capacity
        self._size = min(self._size + n, self._capacity)
        self._inserted_total += n
        return slots

    def evict_oldest(self, count: int) -> None:
        """Drop the ``count`` oldest stored transitions before the ring would overwrite them.

        Their slots become empty (id -1, zero priority) until the ring reaches
        them again; ``inserted_total`` and the cursor are unchanged.
        """
        if not is_int(count) or not 0 <= count <= self._size:
            raise ValueError(f"count must be an int in [0, size={self._size}], got {count!r}")
        if count == 0:
            return
        start = (self._cursor - self._size) % self._capacity
        first = min(count, self._capacity - start)
        for dst, length in ((start, first), (0, count - first)):
            if length == 0:
                continue
            self._ids[dst : dst + length] = -1
            if self._tree is not None:
                self._tree.update_range(dst, np.zeros(length))
        self._size -= count

    # ---------------------------------------------------------------- sample
    def sample(self, batch_size: int, beta: float, out: Mapping[str, np.ndarray] | None = None) -> SampleResult:
        """Draw ``batch_size`` transitions (with replacement).

        ``out`` may give, for some fields, arrays of shape ``(batch_size, *field shape)`` and the field's
        dtype to gather into (a learner's shared-memory slot); those fields of the result are ``out``'s.

        Prioritized mode uses stratified sampling: [0, total) is split into
        ``batch_size`` equal segments with one uniform draw in each, which
        lowers the variance of batch composition without changing each slot's
        marginal probability.  Importance weights are ``(N * P(i))^-beta``
        normalized by the maximum weight **within this sampled batch** (not
        over the whole buffer), so the largest weight in a batch is exactly 1;
        this avoids tracking the global minimum priority.  Uniform mode draws
        slots uniformly among stored ones and returns all-ones weights.
        """
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        beta = float(beta)
        if not (np.isfinite(beta) and beta >= 0.0):
            raise ValueError(f"beta must be finite and non-negative, got {beta}")
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer")

        if self._tree is None:
            indices = self._rng.integers(0, self._size, size=batch_size, dtype=np.int64)
            if self._size < self._capacity:
                # Stored slots run from the oldest to the cursor, which is [0, size) unless evict_oldest
                # dropped the oldest of a wrapped ring.
                indices = (indices + (self._cursor - self._size)) % self._capacity
            weights = np.ones(batch_size, dtype=np.float32)
        else:
            total = self._tree.total
            if not (np.isfinite(total) and total > 0.0):
                raise ValueError(f"priority sum is not usable for sampling: {total}")
            segment = total / batch_size
            targets = (np.arange(batch_size) + self._rng.random(batch_size)) * segment
            indices = self._tree.find_prefix(targets).astype(np.int64, copy=False)
            leaf = self._tree.get(indices)
            # (N*P_i)^-beta / max_j (N*P_j)^-beta == (min_j p_j / p_i)^beta:
            # N and the total cancel, and no huge intermediates can overflow.
            weights = ((leaf.min() / leaf) ** beta).astype(np.float32)

        ids = self._ids[indices]
        out = out or {}
        # mode="clip" for indices known to be in range: np.take buffers its output in the default mode.
        data = {name: np.take(arr, indices, axis=0, out=out.get(name), mode="clip") for name, arr in self._data.items()}
        self._sampled_total += batch_size
        return SampleResult(indices=indices, ids=ids, weights=weights, data=data)

    # -------------------------------------------------------------- priority
    def update_priorities(self, indices: np.ndarray, ids: np.ndarray, priorities: np.ndarray) -> int:
        """Set raw priorities for sampled slots that still hold the same insert.

        Entries whose slot was overwritten since sampling (id mismatch) are
        dropped and counted in ``stale_priority_updates``.  Returns how many
        entries matched.  In uniform mode matching entries are counted but
        there is nothing to store.  All inputs are validated before any write.
        """
        idx, id_arr, raw = check_update(indices, ids, priorities, self._capacity)
        n = idx.shape[0]
        if n == 0:
            return 0

        current = self._ids[idx]
        # current >= 0 also rejects a caller-supplied -1 for an empty slot.
        match = (current == id_arr) & (current >= 0)
        applied = int(np.count_nonzero(match))
        self._stale_updates += n - applied
        if applied:
            if self._tree is not None:
                self._tree.update(idx[match], self._leaf_values(raw[match]))
            self._max_priority = max(self._max_priority, float(raw[match].max()))
        return applied

    # ------------------------------------------------------------- snapshots
    def state_dict(self) -> dict[str, np.ndarray | int | float]:
        """Snapshot of everything needed to resume bit-for-bit.

        Only numpy arrays (copies, never views of live storage) and Python
        scalars, so it can be written with ``np.savez`` and read back with
        ``allow_pickle=False``.
        """
        state: dict[str, np.ndarray | int | float] = {
            "capacity": self._capacity,
            "prioritized": int(self._prioritized),
            "alpha": self._alpha,
            "priority_eps": self._eps,
            "cursor": self._cursor,
            "size": self._size,
            "inserted_total": self._inserted_total,
            "sampled_total": self._sampled_total,
            "stale_priority_updates": self._stale_updates,
            "max_priority": self._max_priority,
            "ids": self._ids.copy(),
            "rng_state": encode_pcg64(self._rng),
        }
        if self._tree is not None:
            state["priorities"] = self._tree.values()
        for name, arr in self._data.items():
            state[DATA_PREFIX + name] = arr.copy()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a ``state_dict`` snapshot into this buffer.

        The buffer's configuration (capacity, fields, mode, alpha, eps) must
        match the snapshot, because stored tree values depend on alpha/eps.
        Everything is validated (``replay.buffer_state``) before anything is modified.
        """
        cap = self._capacity
        config = {
            "capacity": cap,
            "prioritized": int(self._prioritized),
            "alpha": self._alpha,
            "priority_eps": self._eps,
        }
        layouts = {name: ((cap, *spec.shape), spec.dtype) for name, spec in self._fields.items()}
        restored = check_state(state, config, layouts, self._tree is not None)
        for name, arr in restored.data.items():
            self._data[name][...] = arr
        self._ids[...] = restored.ids
        if self._tree is not None:
            assert restored.priorities is not None
            fresh = SumTree(cap)
            fresh.update(np.arange(cap, dtype=np.int64), restored.priorities)
            self._tree = fresh
        self._rng = restored.rng
        self._cursor, self._size = restored.cursor, restored.size
        self._inserted_total = restored.counters["inserted_total"]
        self._sampled_total = restored.counters["sampled_total"]
        self._stale_updates = restored.counters["stale_priority_updates"]
        self._max_priority = restored.max_priority
