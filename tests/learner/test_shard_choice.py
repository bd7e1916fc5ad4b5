"""Sampling replay shards must be distributed as ONE prioritized buffer holding all of their data.

A reference `ReplayBuffer` holds N transitions of random priorities; K real shard buffers hold the same
transitions, split so that their sizes and masses differ a lot. Batches drawn from shards chosen by
`choose_shard` must give each item the reference's probability (chi-square against P(i) and against the
reference's own draws), and each row must carry the importance weight the reference gives that item in
that batch. Choosing shards uniformly, as a control, must fail the same test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from learner.shard_choice import choose_shard
from replay.buffer import FieldSpec, ReplayBuffer

N, B, BATCHES, ALPHA, BETA, EPS = 240, 32, 3000, 0.6, 0.4, 1e-6
FIELDS = {"item": FieldSpec((), np.int64)}
# df + 6 standard deviations of a chi-square with df = N - 1: a true match exceeds it with negligible
# probability (and the seeds are fixed).
CHI2_LIMIT = (N - 1) + 6 * math.sqrt(2 * (N - 1))


def _buffer(items: np.ndarray, priorities: np.ndarray, seed: int) -> ReplayBuffer:
    buf = ReplayBuffer(N, FIELDS, alpha=ALPHA, priority_eps=EPS, seed=seed)
    buf.add({"item": items}, priorities)
    return buf


@pytest.fixture(scope="module")
def world() -> tuple[ReplayBuffer, list[ReplayBuffer], np.ndarray]:
    rng = np.random.default_rng(7)
    priorities = rng.lognormal(0.0, 1.0, N).astype(np.float32)
    items = np.arange(N, dtype=np.int64)
    order = np.argsort(priorities)  # the lowest priorities in a large shard, the highest in a small one
    parts = [order[:130], order[130:210], order[210:]]
    shards = [_buffer(items[p], priorities[p], seed=10 + k) for k, p in enumerate(parts)]
    leaf = (priorities.astype(np.float64) + EPS) ** ALPHA
    return _buffer(items, priorities, seed=1), shards, leaf / leaf.sum()


def _chi_square(counts: np.ndarray, p: np.ndarray) -> float:
    expected = counts.sum() * p
    return float(((counts - expected) ** 2 / expected).sum())


def _draw(shards: list[ReplayBuffer], pick, seed: int) -> tuple[np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    """Item counts over BATCHES batches, each from the shard `pick` chooses, and each batch's (items, weights)."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(N, np.int64)
    batches = []
    for _ in range(BATCHES):
        result = shards[pick([s.mass for s in shards], rng)].sample(B, BETA)
        np.add.at(counts, result.data["item"], 1)
        batches.append((result.data["item"].copy(), result.weights.copy()))
    return counts, batches


def test_rows_have_one_buffers_probabilities(world) -> None:
    reference, shards, p = world
    counts, _ = _draw(shards, choose_shard, seed=3)
    assert _chi_square(counts, p) < CHI2_LIMIT
    ref_counts = np.zeros(N, np.int64)
    for _ in range(BATCHES):
        np.add.at(ref_counts, reference.sample(B, BETA).data["item"], 1)
    assert _chi_square(ref_counts, p) < CHI2_LIMIT
    # The two samples against each other (two-sample chi-square over the items either drew).
    both = counts + ref_counts
    seen = both > 0
    two_sample = (((counts - ref_counts) ** 2)[seen] / both[seen]).sum()
    assert two_sample < CHI2_LIMIT


def test_choosing_shards_uniformly_does_not(world) -> None:
    """The control: without the mass, rows of the small high-priority shard are drawn far too often."""
    _, shards, p = world
    counts, _ = _draw(shards, lambda masses, rng: int(rng.integers(len(masses))), seed=3)
    assert _chi_square(counts, p) > 5 * CHI2_LIMIT


def test_each_rows_weight_is_the_one_buffers(world) -> None:
    """A shard's batch-normalized weights equal (N P(i))^-beta over the batch's largest, N and P(i) global."""
    _, shards, p = world
    _, batches = _draw(shards, choose_shard, seed=5)
    for items, weights in batches[:500]:
        global_w = (N * p[items]) ** -BETA
        np.testing.assert_allclose(weights, global_w / global_w.max(), rtol=1e-5)


def test_choose_shard_never_picks_a_shard_without_mass() -> None:
    rng = np.random.default_rng(0)
    picks = {choose_shard([0.0, 2.0, 0.0, float("nan"), 1.0], rng) for _ in range(2000)}
    assert picks == {1, 4}
    assert choose_shard([0.0, 0.0], rng) is None
    assert choose_shard([float("inf"), -1.0], rng) is None
    shares = np.bincount([choose_shard([1.0, 3.0], rng) for _ in range(20000)], minlength=2) / 20000
    assert abs(shares[1] - 0.75) < 0.015
