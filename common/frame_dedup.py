"""Send each distinct frame of a batch of stacked observations once, with indices that rebuild every stack.

Consecutive stacks of one env share K-1 frames and an n-step `next_obs` is a later `obs`, so full stacks
repeat each frame about 2K times. Frames are merged by content only (equal bytes, checked byte for byte),
which is exact whatever the episode boundaries, reset padding or batching order. The hash that proposes
merges only affects speed: a collision is caught by the check and resolved exactly.
"""

from __future__ import annotations

import functools
import math

import numpy as np

_HASH_SEED = 0x5EED_F4A3
_VERIFY_CHUNK = 128  # frames compared per step: keeps the gathered copy inside the CPU cache


@functools.lru_cache(maxsize=8)
def _multipliers(words: int) -> np.ndarray:
    rng = np.random.default_rng(_HASH_SEED)
    mult = rng.integers(0, np.iinfo(np.uint64).max, size=words, dtype=np.uint64, endpoint=True)
    mult |= np.uint64(1)  # odd: a difference in a single word can never cancel out modulo 2**64
    mult.flags.writeable = False
    return mult


def _words(rows: np.ndarray) -> np.ndarray:
    """Rows of bytes as 64-bit words when they divide evenly (every Atari frame), else as widened bytes."""
    if rows.shape[1] % 8 == 0:
        return rows.view(np.uint64)
    return rows.astype(np.uint64)


def _hash(words: np.ndarray) -> np.ndarray:
    return words @ _multipliers(words.shape[1])  # wraps modulo 2**64 by design


def _mismatches(words: np.ndarray, reps: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Rows whose words differ from `reps[label]`, compared a cache-sized chunk at a time."""
    bad = np.empty(words.shape[0], dtype=bool)
    for start in range(0, words.shape[0], _VERIFY_CHUNK):
        stop = start + _VERIFY_CHUNK
        np.logical_not((words[start:stop] == reps[label[start:stop]]).all(axis=1), out=bad[start:stop])
    return np.flatnonzero(bad)


def frame_hashes(frames: np.ndarray) -> np.ndarray:
    """A 64-bit content hash per frame of (F, *frame_shape): equal frames hash equal; a match still
    needs a byte comparison to be trusted (replay's frame reuse across messages does one)."""
    frames = np.ascontiguousarray(frames)
    rows = frames.reshape(frames.shape[0], -1).view(np.uint8)
    return _hash(_words(rows))


def dedup_stacks(obs: np.ndarray, next_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split two batches of frame stacks into distinct frames and per-stack frame indices.

    `obs` and `next_obs` are (B, K, *frame_shape) arrays of one dtype. Returns `(frames, obs_frames,
    next_obs_frames)`: `frames` is (F, *frame_shape) with each distinct frame once, in order of first
    appearance (all of `obs` row by row, then `next_obs`), and the (B, K) int32 index arrays satisfy
    `frames[obs_frames] == obs` and `frames[next_obs_frames] == next_obs` bit for bit.
    """
    obs = np.asarray(obs)
    next_obs = np.asarray(next_obs)
    if obs.ndim < 3:
        raise ValueError(f"obs must be (B, K, *frame_shape), got shape {obs.shape}")
    if obs.shape != next_obs.shape or obs.dtype != next_obs.dtype:
        raise ValueError(f"obs {obs.dtype}{obs.shape} and next_obs {next_obs.dtype}{next_obs.shape} must match")
    if obs.dtype.hasobject:
        raise ValueError("object arrays cannot be deduplicated by content")
    batch, stack = obs.shape[:2]
    frame_shape = obs.shape[2:]
    n = batch * stack
    if n == 0:
        empty = np.empty((0, stack), dtype=np.int32)
        return np.empty((0, *frame_shape), dtype=obs.dtype), empty, empty.copy()
    if 2 * n > np.iinfo(np.int32).max:
        raise ValueError(f"{2 * n} frames do not fit int32 indices")

    # Byte rows of both halves; reshaping a contiguous input is a view, so nothing is copied here.
    per_frame = math.prod(frame_shape)
    halves = [np.ascontiguousarray(a).reshape(n, per_frame).view(np.uint8) for a in (obs, next_obs)]
    words = [_words(h) for h in halves]
    hashes = np.concatenate([_hash(w) for w in words])

    # One candidate frame per distinct hash, represented by its first row; candidates in first-row order.
    _, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    first = first[order]
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    label = rank[inverse.reshape(-1)]

    def gather(rows: np.ndarray) -> np.ndarray:
        out = np.empty((rows.size, halves[0].shape[1]), dtype=np.uint8)
        in_obs = rows < n
        out[in_obs] = halves[0][rows[in_obs]]
        out[~in_obs] = halves[1][rows[~in_obs] - n]
        return out

    reps = gather(first)
    rep_words = _words(reps)
    bad = np.concatenate([_mismatches(words[0], rep_words, label[:n]), n + _mismatches(words[1], rep_words, label[n:])])
    if bad.size:
        first, label = _split_collisions(halves, first, label, bad)
        reps = gather(first)

    frames = reps.view(obs.dtype).reshape(reps.shape[0], *frame_shape)
    labels = label.astype(np.int32).reshape(2, batch, stack)
    return frames, labels[0], labels[1]


def _split_collisions(
    halves: list[np.ndarray], first: np.ndarray, label: np.ndarray, bad: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Give rows that merely shared a hash with their candidate frame exact labels of their own.

    Such a row differs from every row that matched a candidate (those equal their candidate, and equal
    content means equal hash), so exact dedup among the mismatched rows alone is complete. New frames
    are then merged into first-appearance order like the others.
    """
    n = halves[0].shape[0]
    seen: dict[bytes, int] = {}
    label = label.copy()
    extra: list[int] = []
    for row in bad.tolist():
        key = (halves[0][row] if row < n else halves[1][row - n]).tobytes()
        if key not in seen:
            seen[key] = first.size + len(extra)
            extra.append(row)
        label[row] = seen[key]
    first = np.concatenate([first, np.asarray(extra, dtype=first.dtype)])
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(order.size)
    return first[order], rank[label]
