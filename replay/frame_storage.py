"""Replay storage that keeps each frame once and rebuilds the `obs` / `next_obs` stacks when sampled.

Full stacks cost 2K frames per transition while actors produce about one new frame per transition. A
message brings its distinct frames once plus (B, K) indices into them (`common/frame_dedup.py`); the frames
go into a frame ring and each transition keeps the ring slots of its two stacks.

Frames are also shared across messages: a message's first stacks repeat frames its actor sent in its
previous message (K - 1 + n per env), so each incoming frame is looked up by content hash among the
last `reuse_window` frames written, and a byte-equal one is referenced instead of stored again. That
takes storage from about 1 + (K - 1 + n) * envs / B frames a transition to about one.

Eviction is coupled so that no transition outlives its frames. Before new frames overwrite the ring,
the oldest transitions up to the newest one that references an overwritten frame are dropped through
`ReplayBuffer.evict_oldest`, which keeps ids, priorities and sampling consistent. At most
min(capacity, what `frame_capacity` frames hold) transitions are stored. The ring's part of a snapshot,
and its checks, are `replay/frame_state.py`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from common.frame_dedup import frame_hashes
from replay.buffer import FieldSpec, ReplayBuffer, SampleResult
from replay.frame_state import check_frame_state, frame_state

OBS, NEXT_OBS = "obs", "next_obs"
FRAMES, OBS_FRAMES, NEXT_OBS_FRAMES = "frames", "obs_frames", "next_obs_frames"
MAX_REUSE_WINDOW = 8192  # frames searched for reuse: the latest message of 100 actors or so


def _rows(frames: np.ndarray) -> np.ndarray:
    """Frames as rows of 64-bit words when they divide evenly (84x84 does): an 8x cheaper comparison."""
    rows = np.ascontiguousarray(frames).reshape(frames.shape[0], -1).view(np.uint8)
    return rows.view(np.uint64) if rows.shape[1] % 8 == 0 else rows


class FrameReplayBuffer:
    """A ReplayBuffer whose `obs` and `next_obs` stacks are indices into one shared frame ring.

    `fields` is the same mapping a ReplayBuffer of full stacks takes; `obs` and `next_obs` must both be
    (K, *frame_shape). `add` takes the other fields plus FRAMES (F, *frame_shape) and OBS_FRAMES /
    NEXT_OBS_FRAMES ((B, K) integers indexing FRAMES) instead of the stacks; `sample` returns the stacks.
    The frame ring holds `ceil(capacity * frames_per_transition)` frames. Ids, priorities, sampling and
    stale-update detection are the inner ReplayBuffer's, unchanged.
    """

    def __init__(
        self,
        capacity: int,
        fields: Mapping[str, FieldSpec],
        *,
        frames_per_transition: float = 1.0,
        prioritized: bool = True,
        alpha: float = 0.6,
        priority_eps: float = 1e-6,
        seed: int | None = None,
    ) -> None:
        if not isinstance(fields, Mapping) or OBS not in fields or NEXT_OBS not in fields:
            raise ValueError(f"fields must be a mapping that includes {OBS!r} and {NEXT_OBS!r}")
        spec = fields[OBS]
        if not isinstance(spec, FieldSpec) or fields[NEXT_OBS] != spec:
            raise ValueError(f"{OBS!r} and {NEXT_OBS!r} must have the same FieldSpec")
        if len(spec.shape) < 2 or spec.shape[0] < 1:
            raise ValueError(f"{OBS!r} must be (K, *frame_shape) with K >= 1, got {spec.shape}")
        others = {name: s for name, s in fields.items() if name not in (OBS, NEXT_OBS)}
        if not others:
            raise ValueError(f"fields need at least one field besides {OBS!r} and {NEXT_OBS!r}")
        if set(others) & {FRAMES, OBS_FRAMES, NEXT_OBS_FRAMES}:
            raise ValueError(f"field names {FRAMES!r}, {OBS_FRAMES!r} and {NEXT_OBS_FRAMES!r} are reserved")
        ratio = float(frames_per_transition)
        if not (math.isfinite(ratio) and ratio > 0.0):
            raise ValueError(f"frames_per_transition must be positive and finite, got {frames_per_transition!r}")
        self._buffer = ReplayBuffer(
            capacity, others, prioritized=prioritized, alpha=alpha, priority_eps=priority_eps, seed=seed
        )
        self._fields = dict(fields)
        self._stack = spec.shape[0]
        self._frame_shape = spec.shape[1:]
        self._dtype = spec.dtype
        self._frames_per_transition = ratio
        self._frame_capacity = max(1, math.ceil(capacity * ratio))
        index_dtype = np.int32 if self._frame_capacity <= np.iinfo(np.int32).max else np.int64
        self._ring = np.zeros((self._frame_capacity, *self._frame_shape), dtype=self._dtype)
        self._obs_slots = np.zeros((capacity, self._stack), dtype=index_dtype)
        self._next_slots = np.zeros((capacity, self._stack), dtype=index_dtype)
        # Per transition slot: number (counting all frames ever written) of the oldest frame it references,
        # and the frame number below which eviction must drop it: its message's start minus the reuse
        # window. The second never decreases in insert order, so the oldest transitions go first.
        self._first_frame = np.zeros(capacity, dtype=np.int64)
        self._evict_below = np.zeros(capacity, dtype=np.int64)
        self._written = 0
        self._reuse_window = min(self._frame_capacity // 4, MAX_REUSE_WINDOW)
        # The reuse index: a direct-mapped table, content hash -> frame number, looked up and updated with
        # a few vector operations a message. A slot holds the latest frame whose hash maps there, so a
        # clash only costs a frame stored twice; numbers that left the window are ignored when looked up.
        bits = max(4, (4 * self._reuse_window - 1).bit_length())
        self._index_shift = np.uint64(64 - bits)
        self._index_hash = np.zeros(1 << bits, dtype=np.uint64)
        self._index_number = np.full(1 << bits, -1, dtype=np.int64)

    # ------------------------------------------------------------------ info
    @property
    def capacity(self) -> int:
        """Maximum number of stored transitions (fewer if the frame ring fills first)."""
        return self._buffer.capacity

    @property
    def frame_capacity(self) -> int:
        """Frames the frame ring holds."""
        return self._frame_capacity

    @property
    def frames_per_transition(self) -> float:
        """The frame budget per transition slot this buffer was built with."""
        return self._frames_per_transition

    @property
    def size(self) -> int:
        """Number of transitions currently stored."""
        return self._buffer.size

    def __len__(self) -> int:
        return self._buffer.size

    @property
    def fields(self) -> dict[str, FieldSpec]:
        """Copy of the transition fields, `obs` and `next_obs` included, as `sample` returns them."""
        return dict(self._fields)

    @property
    def prioritized(self) -> bool:
        return self._buffer.prioritized

    @property
    def ids(self) -> np.ndarray:
        """Read-only per-slot insert ids (-1 for empty slots)."""
        return self._buffer.ids

    @property
    def cursor(self) -> int:
        return self._buffer.cursor

    @property
    def inserted_total(self) -> int:
        return self._buffer.inserted_total

    @property
    def sampled_total(self) -> int:
        return self._buffer.sampled_total

    @property
    def stale_priority_updates(self) -> int:
        return self._buffer.stale_priority_updates

    @property
    def max_priority(self) -> float:
        return self._buffer.max_priority

    @property
    def mass(self) -> float:
        return self._buffer.mass

    @property
    def reuse_window(self) -> int:
        """How many of the latest frames written an incoming frame may be matched against."""
        return self._reuse_window

    @property
    def frames_written(self) -> int:
        """Frames ever written to the ring."""
        return self._written

    @property
    def frames_in_use(self) -> int:
        """Ring frames from the oldest stored transition's message to the newest: what the stored data need."""
        if self._buffer.size == 0:
            return 0
        oldest = (self._buffer.cursor - self._buffer.size) % self._buffer.capacity
        return self._written - int(self._first_frame[oldest])

    @property
    def nbytes(self) -> int:
        """Bytes of the preallocated storage: frame ring, slot tables and the inner buffer."""
        tables = self._obs_slots.nbytes + self._next_slots.nbytes + self._first_frame.nbytes + self._evict_below.nbytes
        return self._ring.nbytes + tables + self._buffer.nbytes

    # ------------------------------------------------------------------- add
    def check_message(self, batch: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validate a message's frame part; return `(frames, obs_frames, next_obs_frames)` (indices as int64).

        Raises ValueError for missing or unexpected keys, frames of the wrong dtype or shape, more
        frames than the ring holds, index arrays that are not (B, K) integers within the message's frames,
        or other fields whose batch size is not B. A server can call it when it decodes a message, so a
        malformed one is rejected before it waits for the rate limiter; `add` calls it too.
        """
        if not isinstance(batch, Mapping):
            raise ValueError("batch must be a mapping of field name -> array")
        others = [name for name in self._fields if name not in (OBS, NEXT_OBS)]
        expected = {*others, FRAMES, OBS_FRAMES, NEXT_OBS_FRAMES}
        if batch.keys() != expected:
            missing, extra = expected - batch.keys(), batch.keys() - expected
            raise ValueError(
                f"batch fields do not match: missing={sorted(missing)}, unexpected={sorted(map(str, extra))}"
            )
        frames = np.asarray(batch[FRAMES])
        if frames.dtype != self._dtype or frames.shape[1:] != self._frame_shape or frames.ndim < 1:
            raise ValueError(f"{FRAMES}: {frames.dtype}{frames.shape} is not (F, *{self._frame_shape}) {self._dtype}")
        count = frames.shape[0]
        if count > self._frame_capacity:
            raise ValueError(
                f"a message of {count} frames cannot fit a frame ring of {self._frame_capacity}: raise "
                "frames_per_transition or send smaller messages"
            )
        index = []
        for name in (OBS_FRAMES, NEXT_OBS_FRAMES):
            arr = np.asarray(batch[name])
            if not np.issubdtype(arr.dtype, np.integer) or arr.ndim != 2 or arr.shape[1] != self._stack:
                raise ValueError(f"{name}: expected (B, {self._stack}) integers, got {arr.dtype}{arr.shape}")
            if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= count):
                raise ValueError(f"{name}: frame indices must lie in [0, {count})")
            index.append(arr.astype(np.int64, copy=False))
        rows = index[0].shape[0]
        if index[1].shape[0] != rows:
            raise ValueError(f"{OBS_FRAMES} and {NEXT_OBS_FRAMES} have different batch sizes")
        for name in others:
            if np.shape(batch[name])[:1] != (rows,):
                raise ValueError(f"field {name!r}: batch size {np.shape(batch[name])[:1]} != {rows} transitions")
        return frames, index[0], index[1]

    def add(self, batch: Mapping[str, np.ndarray], priorities: np.ndarray | None = None) -> np.ndarray:
        """Insert one message's B transitions; return the slots of the ones kept (as `ReplayBuffer.add`).

        `batch` holds FRAMES, OBS_FRAMES, NEXT_OBS_FRAMES and every field but `obs` / `next_obs`. Stored
        transitions whose frames the message's frames overwrite are evicted first. Everything is
        validated (`check_message`, then the inner buffer's checks) before anything is written.
        """
        frames, obs_frames, next_frames = self.check_message(batch)
        others = [name for name in self._fields if name not in (OBS, NEXT_OBS)]
        # The inner buffer validates the remaining fields and the priorities before it writes anything;
        # from here on nothing can fail.
        slots = self._buffer.add({name: batch[name] for name in others}, priorities)
        rows = obs_frames.shape[0]
        if rows == 0:
            return slots
        kept = slots.size
        start = self._written
        hashes = frame_hashes(frames)
        numbers, new = self._number_frames(frames, hashes)
        fresh = np.flatnonzero(new)  # message frames to write, straight into the ring (no staging copy)
        obs_numbers, next_numbers = numbers[obs_frames[rows - kept :]], numbers[next_frames[rows - kept :]]
        self._obs_slots[slots] = obs_numbers % self._frame_capacity
        self._next_slots[slots] = next_numbers % self._frame_capacity
        self._first_frame[slots] = np.minimum(obs_numbers.min(axis=1), next_numbers.min(axis=1))
        self._evict_below[slots] = start - self._reuse_window
        added = fresh.shape[0]
        self._buffer.evict_oldest(self._stale_count(start + added - self._frame_capacity))
        pos = start % self._frame_capacity
        first = min(added, self._frame_capacity - pos)
        # mode="clip" (the indices are in range by construction): np.take buffers its output otherwise.
        np.take(frames, fresh[:first], axis=0, out=self._ring[pos : pos + first], mode="clip")
        np.take(frames, fresh[first:], axis=0, out=self._ring[: added - first], mode="clip")
        self._written = start + added
        self._remember(hashes, new, numbers)
        return slots

    def _number_frames(self, frames: np.ndarray, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each message frame's frame number: an earlier byte-equal frame still in the reuse window, or
        the next free number. Returns (numbers, mask of the frames to write)."""
        count = frames.shape[0]
        numbers = np.full(count, -1, dtype=np.int64)
        # Reusable: in the window, and not overwritten by this message's own new frames (at most `count`).
        lowest = max(self._written - self._reuse_window, self._written + count - self._frame_capacity, 0)
        if count:
            slot = hashes >> self._index_shift
            found = self._index_number[slot]
            candidates = np.flatnonzero((found >= lowest) & (self._index_hash[slot] == hashes))
            if candidates.size:
                numbers_found = found[candidates]
                stored = _rows(self._ring[numbers_found % self._frame_capacity])
                same = (stored == _rows(frames[candidates])).all(axis=1)
                numbers[candidates[same]] = numbers_found[same]
        new = numbers < 0
        numbers[new] = self._written + np.arange(int(new.sum()), dtype=np.int64)
        return numbers, new

    def _remember(self, hashes: np.ndarray, new: np.ndarray, numbers: np.ndarray) -> None:
        """Index the frames just written for reuse (frames that left the window are skipped at lookup)."""
        slot = hashes[new] >> self._index_shift
        self._index_hash[slot] = hashes[new]
        self._index_number[slot] = numbers[new]

    def _stale_count(self, threshold: int) -> int:
        """How many of the oldest stored transitions to evict so that none references a frame below
        `threshold`: up to and including the newest one that does.

        `_evict_below` (message start minus the reuse window) never decreases from the oldest stored
        transition to the newest and never exceeds a transition's oldest frame, so a binary search
        bounds the candidates (about a reuse window's worth), and their actual oldest frames decide.
        Transitions between two that must go go too, so eviction stays oldest-first; they are few.
        """
        cap, size = self._buffer.capacity, self._buffer.size
        oldest = (self._buffer.cursor - size) % cap
        lo, hi = 0, size
        while lo < hi:
            mid = (lo + hi) // 2
            if self._evict_below[(oldest + mid) % cap] < threshold:
                lo = mid + 1
            else:
                hi = mid
        if lo == 0:
            return 0
        stale = np.flatnonzero(self._first_frame[(oldest + np.arange(lo)) % cap] < threshold)
        return int(stale[-1]) + 1 if stale.size else 0

    # ---------------------------------------------------------------- sample
    def stacks(self, indices: np.ndarray, out: Mapping[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rebuilt `(obs, next_obs)`, each (len(indices), K, *frame_shape), of stored slots (into `out`'s
        `obs` / `next_obs` arrays where given)."""
        idx = np.asarray(indices)
        if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype, np.integer)):
            raise ValueError(f"indices must be 1-D integers, got {idx.dtype}{idx.shape}")
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.capacity):
            raise ValueError(f"indices must lie in [0, {self.capacity})")
        if np.any(self._buffer.ids[idx] < 0):
            raise ValueError("indices include empty slots")
        if np.any(self._first_frame[idx] < self._written - self._frame_capacity):
            # Eviction makes this impossible; checking costs B comparisons and rules out silent corruption.
            raise RuntimeError("a stored transition's frames were overwritten (frame/transition eviction bug)")
        out = out or {}
        return tuple(  # type: ignore[return-value]
            np.take(self._ring, slots[idx], axis=0, out=out.get(name), mode="clip")  # in range: see above
            for name, slots in ((OBS, self._obs_slots), (NEXT_OBS, self._next_slots))
        )

    def sample(self, batch_size: int, beta: float, out: Mapping[str, np.ndarray] | None = None) -> SampleResult:
        """As `ReplayBuffer.sample`, with `obs` and `next_obs` rebuilt from the frame ring."""
        out = out or {}
        result = self._buffer.sample(batch_size, beta, {k: v for k, v in out.items() if k not in (OBS, NEXT_OBS)})
        obs, next_obs = self.stacks(result.indices, out)
        rebuilt = {OBS: obs, NEXT_OBS: next_obs}
        data = {name: rebuilt[name] if name in rebuilt else result.data[name] for name in self._fields}
        return SampleResult(indices=result.indices, ids=result.ids, weights=result.weights, data=data)

    def update_priorities(self, indices: np.ndarray, ids: np.ndarray, priorities: np.ndarray) -> int:
        """As `ReplayBuffer.update_priorities`; updates for transitions evicted early count as stale."""
        return self._buffer.update_priorities(indices, ids, priorities)

    # ------------------------------------------------------------- snapshots
    def _tables(self) -> dict[str, np.ndarray]:
        """The frame ring and slot tables by their snapshot names (`replay.frame_state.TABLES`)."""
        return {
            "ring": self._ring,
            "obs_slots": self._obs_slots,
            "next_obs_slots": self._next_slots,
            "first_frame": self._first_frame,
            "evict_below": self._evict_below,
        }

    def state_dict(self) -> dict[str, np.ndarray | int | float]:
        """The inner buffer's snapshot plus the frame ring and slot tables (copies), under `frames.` keys."""
        state = self._buffer.state_dict()
        state.update(frame_state(self._frame_capacity, self._written, self._tables()))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict` snapshot; the configuration, frame ring size included, must match.

        Everything is validated (and every stored transition's frames checked to be intact) before
        anything is modified.
        """
        tables = self._tables()
        written, loaded = check_frame_state(state, self._frame_capacity, self.capacity, tables)
        self._buffer.load_state_dict(state)  # validates everything it owns before changing anything
        for name, arr in loaded.items():
            tables[name][...] = arr
        self._written = written
        self._index_number[...] = -1  # reuse starts again with the next messages
