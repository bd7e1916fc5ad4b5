"""Tests for common.frame_dedup: exact round trips, canonical output, and the hash-collision path."""

from __future__ import annotations

from unittest import mock

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import common.frame_dedup as frame_dedup
from common.frame_dedup import dedup_stacks


def reference(obs: np.ndarray, next_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct frames in order of first appearance, by exact bytes, the slow obvious way."""
    rows = list(obs.reshape(-1, *obs.shape[2:])) + list(next_obs.reshape(-1, *obs.shape[2:]))
    index: dict[bytes, int] = {}
    labels = [index.setdefault(r.tobytes(), len(index)) for r in rows]
    frames = [None] * len(index)
    for r, lab in zip(rows, labels, strict=True):
        frames[lab] = r
    lab = np.asarray(labels, dtype=np.int32).reshape(2, *obs.shape[:2])
    return np.asarray(frames, dtype=obs.dtype).reshape(-1, *obs.shape[2:]), lab[0], lab[1]


def assert_exact(obs: np.ndarray, next_obs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    frames, obs_frames, next_frames = dedup_stacks(obs, next_obs)
    assert obs_frames.dtype == np.int32 and next_frames.dtype == np.int32
    assert obs_frames.shape == obs.shape[:2] and next_frames.shape == obs.shape[:2]
    assert frames.dtype == obs.dtype and frames.shape[1:] == obs.shape[2:]
    np.testing.assert_array_equal(frames[obs_frames], obs)
    np.testing.assert_array_equal(frames[next_frames], next_obs)
    ref = reference(obs, next_obs)  # canonical: complete dedup, first-appearance order
    for got, want in zip((frames, obs_frames, next_frames), ref, strict=True):
        np.testing.assert_array_equal(got, want)
    return frames, obs_frames, next_frames


@st.composite
def stack_batches(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """Stacks drawn from a small pool of frames, so duplicates are common; sizes with and without 8-byte words."""
    dtype = np.dtype(draw(st.sampled_from(["uint8", "int16", "float32"])))
    h, w = draw(st.sampled_from([(2, 4), (3, 5), (1, 1), (4, 6), (2, 3)]))
    batch, stack = draw(st.integers(0, 10)), draw(st.integers(1, 4))
    pool_size = draw(st.integers(1, 6))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    pool = rng.integers(0, 3, size=(pool_size, h, w)).astype(dtype)  # tiny alphabet: near-duplicates too
    obs = pool[rng.integers(0, pool_size, size=(batch, stack))]
    next_obs = pool[rng.integers(0, pool_size, size=(batch, stack))]
    return obs, next_obs


@settings(max_examples=300, deadline=None)
@given(stack_batches())
def test_round_trip_is_exact_and_canonical(batch: tuple[np.ndarray, np.ndarray]) -> None:
    assert_exact(*batch)


@settings(max_examples=100, deadline=None)
@given(stack_batches(), st.sampled_from(["constant", "parity"]))
def test_hash_collisions_are_resolved_exactly(batch: tuple[np.ndarray, np.ndarray], kind: str) -> None:
    """A hash that merges different frames must only cost speed, never exactness or completeness."""

    def weak(words: np.ndarray) -> np.ndarray:
        if kind == "constant":
            return np.zeros(words.shape[0], dtype=np.uint64)
        return words.sum(axis=1, dtype=np.uint64) % np.uint64(2)

    with mock.patch.object(frame_dedup, "_hash", weak):
        assert_exact(*batch)


def sliding_stacks(episodes: list[int], stack: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Stacks as a frame-stacking wrapper builds them (reset frame repeated), n-step next_obs, across episodes."""
    rng = np.random.default_rng(seed)
    obs, next_obs, distinct = [], [], 0
    for length in episodes:
        seq = rng.integers(0, 256, size=(length + 1, 84, 84), dtype=np.uint8)
        distinct += length + 1
        padded = np.concatenate([np.repeat(seq[:1], stack - 1, axis=0), seq])
        stacks = np.stack([padded[t : t + stack] for t in range(length + 1)])  # stacks[t] observes step t
        for t in range(length):
            obs.append(stacks[t])
            next_obs.append(stacks[min(t + n, length)])
    return np.stack(obs), np.stack(next_obs), distinct


def test_frame_stacks_across_episode_boundaries_keep_each_frame_once() -> None:
    obs, next_obs, distinct = sliding_stacks([5, 1, 12, 3], stack=4, n=3, seed=0)
    frames, _, _ = assert_exact(obs, next_obs)
    assert len(frames) == distinct  # every frame of every episode once, nothing else


def test_interleaved_envs_and_shuffled_order() -> None:
    a_obs, a_next, a_distinct = sliding_stacks([20], stack=4, n=3, seed=1)
    b_obs, b_next, b_distinct = sliding_stacks([7, 13], stack=4, n=3, seed=2)
    obs, next_obs = np.concatenate([a_obs, b_obs]), np.concatenate([a_next, b_next])
    order = np.random.default_rng(3).permutation(len(obs))
    frames, _, _ = assert_exact(obs[order], next_obs[order])
    assert len(frames) == a_distinct + b_distinct


def test_non_contiguous_inputs() -> None:
    obs, next_obs, _ = sliding_stacks([9], stack=4, n=3, seed=4)
    assert_exact(obs[::2], next_obs[::2])
    assert_exact(np.swapaxes(obs, 2, 3), np.swapaxes(next_obs, 2, 3))


def test_empty_batch() -> None:
    obs = np.zeros((0, 4, 84, 84), np.uint8)
    frames, obs_frames, next_frames = dedup_stacks(obs, obs)
    assert frames.shape == (0, 84, 84) and frames.dtype == np.uint8
    assert obs_frames.shape == next_frames.shape == (0, 4)


@pytest.mark.parametrize(
    "obs, next_obs",
    [
        (np.zeros((2, 4, 3, 3), np.uint8), np.zeros((2, 4, 3, 4), np.uint8)),
        (np.zeros((2, 4, 3, 3), np.uint8), np.zeros((2, 4, 3, 3), np.int16)),
        (np.zeros((2, 4), np.uint8), np.zeros((2, 4), np.uint8)),
        (np.zeros((2, 1, 1), object), np.zeros((2, 1, 1), object)),
    ],
)
def test_rejects_mismatched_or_unusable_inputs(obs: np.ndarray, next_obs: np.ndarray) -> None:
    with pytest.raises(ValueError):
        dedup_stacks(obs, next_obs)
