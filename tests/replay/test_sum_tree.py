"""SumTree checked against a brute-force cumsum/searchsorted reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replay.sum_tree import SumTree


def ref_find(leaves: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Leaf i with cum[i-1] <= t < cum[i]; side='right' skips zero leaves."""
    return np.searchsorted(np.cumsum(leaves), targets, side="right")


# Multiples of 1/4 up to a few thousand: sums are exact in float64, so the tree
# and the cumsum reference must agree exactly, not just approximately.
dyadic = st.integers(min_value=0, max_value=4000).map(lambda k: k / 4.0)
sparse_dyadic = st.one_of(st.just(0.0), dyadic)


@settings(max_examples=150, deadline=None)
@given(data=st.data(), capacity=st.integers(min_value=1, max_value=40))
def test_matches_reference_exactly(data: st.DataObject, capacity: int) -> None:
    tree = SumTree(capacity)
    ref = np.zeros(capacity)
    index = st.integers(min_value=0, max_value=capacity - 1)
    n_ops = data.draw(st.integers(min_value=1, max_value=6), label="n_ops")
    for _ in range(n_ops):
        # Small index range relative to op size makes duplicates common.
        pairs = data.draw(st.lists(st.tuples(index, sparse_dyadic), min_size=0, max_size=12))
        idx = np.array([i for i, _ in pairs], dtype=np.int64)
        vals = np.array([v for _, v in pairs], dtype=np.float64)
        tree.update(idx, vals)
        for i, v in pairs:  # sequential semantics: last write wins
            ref[i] = v

        np.testing.assert_array_equal(tree.get(np.arange(capacity)), ref)
        np.testing.assert_array_equal(tree.values(), ref)
        assert tree.total == ref.sum()
        if ref.sum() == 0:
            with pytest.raises(ValueError):
                tree.find_prefix(np.array([0.0]))
            continue

        total = ref.sum()
        cum = np.cumsum(ref)
        u = np.array(data.draw(st.lists(st.floats(0.0, 1.0, exclude_max=True), max_size=20)))
        edges = np.concatenate(
            [
                [0.0, np.nextafter(total, 0.0)],
                cum[cum < total],  # exact segment boundaries
                np.nextafter(cum, 0.0)[cum > 0],  # just below each boundary
            ]
        )
        targets = np.concatenate([u * total, edges])
        got = tree.find_prefix(targets)
        np.testing.assert_array_equal(got, ref_find(ref, targets))
        assert np.all(got < capacity)
        assert np.all(ref[got] > 0)


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(
        st.one_of(
            st.just(0.0),
            st.floats(min_value=1e-300, max_value=1e6, allow_nan=False, allow_infinity=False),
        ),
        min_size=1,
        max_size=70,
    ),
    u=st.lists(st.floats(0.0, 1.0), max_size=30),
)
def test_arbitrary_floats_never_pick_zero_or_padding(values: list[float], u: list[float]) -> None:
    leaves = np.array(values)
    capacity = leaves.size
    tree = SumTree(capacity)
    tree.update(np.arange(capacity), leaves)
    total = tree.total
    if total == 0:
        return
    np.testing.assert_allclose(total, leaves.sum(), rtol=1e-12)
    # Include targets at/past the total and below zero to exercise the clamping.
    targets = np.concatenate([np.array(u) * total, [0.0, -1.0, -total, total, np.nextafter(total, np.inf), total * 2]])
    got = tree.find_prefix(targets)
    assert got.dtype == np.int64
    assert np.all((got >= 0) & (got < capacity))
    assert np.all(leaves[got] > 0)
    # Prefix condition holds up to rounding.
    cum = np.concatenate([[0.0], np.cumsum(leaves)])
    clipped = np.clip(targets, 0.0, total)
    tol = 1e-9 * total
    assert np.all(cum[got] <= clipped + tol)
    assert np.all(clipped < cum[got + 1] + tol)


def test_target_at_total_with_trailing_zeros() -> None:
    tree = SumTree(10)  # padded to 16 leaves
    tree.update(np.array([0, 3, 5]), np.array([0.1, 0.2, 0.3]))
    last = tree.find_prefix(np.array([tree.total, 1e9, np.nextafter(tree.total, 0)]))
    np.testing.assert_array_equal(last, [5, 5, 5])
    np.testing.assert_array_equal(tree.find_prefix(np.array([-1.0, -0.0])), [0, 0])
    tree.update(np.array([0]), np.array([0.0]))  # leading zero leaf
    np.testing.assert_array_equal(tree.find_prefix(np.array([-1.0, 0.0])), [3, 3])


def test_duplicate_indices_last_write_wins_and_ancestors_consistent() -> None:
    tree = SumTree(8)
    tree.update(np.array([3, 3, 1, 3, 1]), np.array([1.0, 2.0, 4.0, 5.0, 0.0]))
    np.testing.assert_array_equal(tree.get(np.array([1, 3])), [0.0, 5.0])
    assert tree.total == 5.0
    np.testing.assert_array_equal(tree.find_prefix(np.array([0.0, 4.99])), [3, 3])


def test_capacity_one() -> None:
    tree = SumTree(1)
    tree.update(np.array([0]), np.array([2.5]))
    assert tree.total == 2.5
    np.testing.assert_array_equal(tree.find_prefix(np.array([0.0, 2.4, 2.5])), [0, 0, 0])


def test_find_prefix_preserves_shape() -> None:
    tree = SumTree(4)
    tree.update(np.arange(4), np.ones(4))
    out = tree.find_prefix(np.array([[0.5, 1.5], [2.5, 3.5]]))
    np.testing.assert_array_equal(out, [[0, 1], [2, 3]])


@pytest.mark.parametrize(
    "idx, vals",
    [
        ([0], [-1.0]),
        ([0], [np.nan]),
        ([0], [np.inf]),
        ([4], [1.0]),
        ([-1], [1.0]),
        ([0.0], [1.0]),
        ([0, 1], [1.0, 2.0, 3.0]),
    ],
)
def test_update_rejects_bad_input_without_writing(idx: list, vals: list) -> None:
    tree = SumTree(4)
    tree.update(np.arange(4), np.full(4, 2.0))
    with pytest.raises(ValueError):
        tree.update(np.array(idx), np.array(vals))
    np.testing.assert_array_equal(tree.values(), np.full(4, 2.0))
    assert tree.total == 8.0


def test_find_prefix_rejects_nan_and_empty_tree() -> None:
    tree = SumTree(4)
    with pytest.raises(ValueError):
        tree.find_prefix(np.array([0.0]))
    tree.update(np.array([2]), np.array([1.0]))
    with pytest.raises(ValueError):
        tree.find_prefix(np.array([np.nan]))


@pytest.mark.parametrize("capacity", [0, -3, 2.0, True])
def test_bad_capacity(capacity: object) -> None:
    with pytest.raises(ValueError):
        SumTree(capacity)  # type: ignore[arg-type]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_update_range_matches_update(data: st.DataObject) -> None:
    capacity = data.draw(st.integers(1, 70))
    start = data.draw(st.integers(0, capacity))
    length = data.draw(st.integers(0, capacity - start))
    values = np.array(data.draw(st.lists(st.integers(0, 8), min_size=length, max_size=length)), dtype=np.float64) / 4
    base = np.array(data.draw(st.lists(st.integers(0, 8), min_size=capacity, max_size=capacity)), dtype=np.float64)
    by_range, by_index = SumTree(capacity), SumTree(capacity)
    for tree in (by_range, by_index):
        tree.update(np.arange(capacity), base)
    by_range.update_range(start, values)
    by_index.update(np.arange(start, start + length), values)
    np.testing.assert_array_equal(by_range._tree, by_index._tree)


def test_update_range_rejects_bad_input() -> None:
    tree = SumTree(8)
    with pytest.raises(ValueError):
        tree.update_range(6, np.ones(3))
    with pytest.raises(ValueError):
        tree.update_range(0, np.array([1.0, -1.0]))
