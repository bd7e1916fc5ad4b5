"""ReplayBuffer: storage semantics, sampling distribution, weights, snapshots."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pytest

from replay.buffer import FieldSpec, ReplayBuffer, SampleResult

FIELDS = {
    "obs": FieldSpec((3,), np.dtype(np.float32)),
    "action": FieldSpec((), np.dtype(np.int64)),
    "reward": FieldSpec((), np.dtype(np.float32)),
}


def make_batch(start: int, n: int) -> dict[str, np.ndarray]:
    """Rows tagged by their global position so stored content is checkable."""
    k = np.arange(start, start + n)
    return {
        "obs": np.stack([k, k + 0.5, -k], axis=1).astype(np.float32),
        "action": k.astype(np.int64),
        "reward": (k * 0.25).astype(np.float32),
    }


def chi2_critical(dof: int, p: float = 1e-3) -> float:
    """Upper-tail chi-square quantile via the Wilson-Hilferty approximation.

    Accurate to well under 1% for dof >= 3, which is plenty for a fixed-seed
    test at p = 1e-3 (scipy is not available in this environment).
    """
    z = NormalDist().inv_cdf(1.0 - p)
    h = 2.0 / (9.0 * dof)
    return dof * (1.0 - h + z * np.sqrt(h)) ** 3


def chi2_stat(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = counts.sum() * probs
    return float(((counts - expected) ** 2 / expected).sum())


def assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# ------------------------------------------------------------------ storage
def test_ring_eviction_oldest_first_and_ids() -> None:
    buf = ReplayBuffer(5, FIELDS, seed=0)
    np.testing.assert_array_equal(buf.add(make_batch(0, 3)), [0, 1, 2])
    assert buf.size == 3 and len(buf) == 3
    np.testing.assert_array_equal(buf.add(make_batch(3, 4)), [3, 4, 0, 1])
    assert buf.size == 5
    assert buf.inserted_total == 7
    # Inserts 0 and 1 (the oldest) were evicted; insert k sits in slot k % 5.
    np.testing.assert_array_equal(buf.ids, [5, 6, 2, 3, 4])
    st = buf.state_dict()
    np.testing.assert_array_equal(st["data.action"], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(st["data.obs"][:, 0], [5, 6, 2, 3, 4])
    np.testing.assert_array_equal(st["data.reward"], np.float32([5, 6, 2, 3, 4]) * 0.25)
    # Next insert overwrites the current oldest (id 2 in slot 2).
    np.testing.assert_array_equal(buf.add(make_batch(7, 1)), [2])
    np.testing.assert_array_equal(buf.ids, [5, 6, 7, 3, 4])


def test_ids_view_is_read_only() -> None:
    buf = ReplayBuffer(3, FIELDS)
    with pytest.raises(ValueError):
        buf.ids[0] = 5


def test_add_more_than_capacity_keeps_last_rows() -> None:
    buf = ReplayBuffer(5, FIELDS, seed=0)
    buf.add(make_batch(0, 2))
    slots = buf.add(make_batch(2, 12), priorities=np.arange(12, dtype=np.float64))
    # Rows 9..13 (global) survive, placed where one-by-one inserts would go.
    np.testing.assert_array_equal(slots, [(2 + j) % 5 for j in range(7, 12)])
    assert buf.size == 5 and buf.inserted_total == 14
    ids = buf.ids
    np.testing.assert_array_equal(ids[slots], np.arange(9, 14))
    st = buf.state_dict()
    np.testing.assert_array_equal(st["data.action"][slots], np.arange(9, 14))
    # Tree priorities correspond to the kept rows' priorities 7..11.
    np.testing.assert_allclose(st["priorities"][slots], (np.arange(7, 12) + 1e-6) ** 0.6)
    assert buf.max_priority == 11.0
    # The write cursor continues after the whole batch.
    np.testing.assert_array_equal(buf.add(make_batch(14, 1)), [14 % 5])


def test_empty_add_is_noop() -> None:
    buf = ReplayBuffer(4, FIELDS)
    before = buf.state_dict()
    assert buf.add(make_batch(0, 0)).shape == (0,)
    assert_state_equal(before, buf.state_dict())


def _bad_batches() -> list[tuple[dict, object]]:
    good = make_batch(0, 3)
    cases: list[tuple[dict, object]] = []
    cases.append(({k: v for k, v in good.items() if k != "reward"}, None))  # missing
    cases.append(({**good, "extra": np.zeros(3)}, None))  # unexpected
    cases.append(({**good, "obs": good["obs"].astype(np.float64)}, None))  # dtype
    cases.append(({**good, "action": good["action"].astype(np.int32)}, None))  # dtype
    cases.append(({**good, "obs": np.zeros((3, 4), np.float32)}, None))  # shape
    cases.append(({**good, "obs": np.zeros((3, 3, 1), np.float32)}, None))  # rank
    cases.append(({**good, "reward": np.zeros(2, np.float32)}, None))  # ragged B
    cases.append(({**good, "action": np.int64(1)}, None))  # missing batch dim
    cases.append((good, np.array([1.0, -0.1, 2.0])))  # negative priority
    cases.append((good, np.array([1.0, np.nan, 2.0])))  # nan priority
    cases.append((good, np.array([1.0, np.inf, 2.0])))  # inf priority
    cases.append((good, np.array([1.0, 2.0])))  # wrong length
    return cases


@pytest.mark.parametrize("prioritized", [True, False])
@pytest.mark.parametrize("case", range(len(_bad_batches())))
def test_spec_mismatch_rejected_and_nothing_written(case: int, prioritized: bool) -> None:
    batch, prios = _bad_batches()[case]
    buf = ReplayBuffer(4, FIELDS, prioritized=prioritized, seed=1)
    buf.add(make_batch(100, 2), priorities=np.array([0.5, 3.0]))
    before = buf.state_dict()
    with pytest.raises(ValueError):
        buf.add(batch, priorities=prios)
    assert_state_equal(before, buf.state_dict())


# ----------------------------------------------------------------- sampling
def test_prioritized_distribution_chi_square() -> None:
    """Sampling frequencies must follow (p + eps)^alpha / sum, not p / sum."""
    raw = np.array([0.0, 0.05, 0.3, 1.0, 2.0, 4.0, 7.5, 12.0, 0.7, 20.0])
    alpha, eps = 0.6, 1e-3
    buf = ReplayBuffer(len(raw), FIELDS, alpha=alpha, priority_eps=eps, seed=1234)
    buf.add(make_batch(0, len(raw)), priorities=raw)
    expected = (raw + eps) ** alpha
    expected /= expected.sum()

    counts = np.zeros(len(raw))
    # batch_size=1 gives independent (multinomial) draws; the larger batches
    # are stratified, which only lowers variance, so the test stays valid.
    for batch_size, calls in [(1, 3000), (7, 1000), (64, 300)]:
        for _ in range(calls):
            res = buf.sample(batch_size, beta=0.4)
            counts += np.bincount(res.indices, minlength=len(raw))
    n = counts.sum()
    assert n == 3000 + 7000 + 64 * 300
    assert buf.sampled_total == n
    assert np.all(expected * n >= 5)  # chi-square validity

    crit = chi2_critical(len(raw) - 1)
    assert chi2_stat(counts, expected) < crit
    # Power check: the same counts clearly reject the un-exponentiated law.
    wrong = (raw + eps) / (raw + eps).sum()
    assert chi2_stat(counts, wrong) > 10 * crit


def test_uniform_mode_distribution_and_weights() -> None:
    buf = ReplayBuffer(16, FIELDS, prioritized=False, seed=7)
    buf.add(make_batch(0, 10), priorities=np.arange(10.0))  # priorities ignored
    counts = np.zeros(16)
    for _ in range(200):
        res = buf.sample(50, beta=1.0)
        np.testing.assert_array_equal(res.weights, np.ones(50, np.float32))
        assert res.weights.dtype == np.float32
        counts += np.bincount(res.indices, minlength=16)
    assert counts[10:].sum() == 0  # never samples unwritten slots
    assert chi2_stat(counts[:10], np.full(10, 0.1)) < chi2_critical(9)
    # Priority updates are validated and counted, but there is nothing to store.
    res = buf.sample(4, beta=1.0)
    assert buf.update_priorities(res.indices, res.ids, np.ones(4)) == 4
    assert "priorities" not in buf.state_dict()


def test_sample_returns_matching_data_and_ids() -> None:
    buf = ReplayBuffer(8, FIELDS, seed=3)
    buf.add(make_batch(0, 13), priorities=np.linspace(0.1, 3.0, 13))
    res = buf.sample(32, beta=0.5)
    assert isinstance(res, SampleResult)
    assert res.indices.dtype == np.int64 and res.ids.dtype == np.int64
    assert res.weights.dtype == np.float32 and res.weights.shape == (32,)
    assert np.all(res.indices < buf.size)
    # Stored row for insert id k is make_batch(k)'s row.
    np.testing.assert_array_equal(res.data["action"], res.ids)
    np.testing.assert_array_equal(res.data["obs"][:, 0], res.ids.astype(np.float32))
    assert res.data["obs"].shape == (32, 3) and res.data["obs"].dtype == np.float32
    # Gathered data are copies, not views into the store.
    res.data["action"][:] = -1
    assert np.all(buf.state_dict()["data.action"] >= 0)


def test_importance_weights_match_formula() -> None:
    raw = np.array([0.5, 1.0, 2.0, 4.0, 8.0, 0.0])
    alpha, eps, beta = 0.7, 0.01, 0.4
    buf = ReplayBuffer(10, FIELDS, alpha=alpha, priority_eps=eps, seed=11)
    buf.add(make_batch(0, len(raw)), priorities=raw)
    for _ in range(20):
        res = buf.sample(16, beta=beta)
        pr = (raw + eps) ** alpha
        prob = pr / pr.sum()
        w = (len(raw) * prob[res.indices]) ** -beta
        w /= w.max()  # normalized over the sampled batch
        np.testing.assert_allclose(res.weights, w, rtol=1e-6)
        assert res.weights.max() == np.float32(1.0)
    # beta = 0 disables the correction entirely.
    np.testing.assert_array_equal(buf.sample(16, beta=0.0).weights, np.ones(16, np.float32))


def test_stratified_sampling_covers_segments() -> None:
    """With equal priorities and batch == size each segment maps to one slot."""
    buf = ReplayBuffer(8, FIELDS, seed=5)
    buf.add(make_batch(0, 8), priorities=np.ones(8))
    for _ in range(10):
        np.testing.assert_array_equal(np.sort(buf.sample(8, beta=1.0).indices), np.arange(8))


def test_missing_priorities_use_running_max() -> None:
    alpha, eps = 0.6, 1e-6
    buf = ReplayBuffer(6, FIELDS, alpha=alpha, priority_eps=eps, seed=0)
    buf.add(make_batch(0, 2))  # initial default priority is 1.0
    st = buf.state_dict()["priorities"]
    np.testing.assert_allclose(st[:2], (1.0 + eps) ** alpha)
    buf.add(make_batch(2, 1), priorities=np.array([3.0]))
    assert buf.max_priority == 3.0
    res = buf.sample(4, beta=1.0)
    buf.update_priorities(res.indices[:1], res.ids[:1], np.array([9.0]))
    assert buf.max_priority == 9.0
    slots = buf.add(make_batch(3, 2))
    np.testing.assert_allclose(buf.state_dict()["priorities"][slots], (9.0 + eps) ** alpha)


def test_sample_rejects_bad_args() -> None:
    buf = ReplayBuffer(4, FIELDS)
    with pytest.raises(ValueError, match="empty"):
        buf.sample(2, beta=0.4)
    buf.add(make_batch(0, 2))
    for bs in (0, -1, 2.0, True):
        with pytest.raises(ValueError):
            buf.sample(bs, beta=0.4)  # type: ignore[arg-type]
    for beta in (-0.1, np.nan):
        with pytest.raises(ValueError):
            buf.sample(2, beta=beta)
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(4, FIELDS, prioritized=False).sample(1, beta=0.0)


# ---------------------------------------------------------------- priorities
def test_priority_update_applies_and_changes_sampling() -> None:
    buf = ReplayBuffer(4, FIELDS, alpha=1.0, priority_eps=1e-6, seed=2)
    buf.add(make_batch(0, 4), priorities=np.ones(4))
    ids = buf.ids.copy()
    n = buf.update_priorities(np.arange(4), ids, np.array([0.0, 0.0, 0.0, 1000.0]))
    assert n == 4 and buf.stale_priority_updates == 0
    res = buf.sample(1000, beta=0.0)
    assert np.mean(res.indices == 3) > 0.99


def test_stale_priority_update_ignored_after_overwrite() -> None:
    alpha, eps = 0.6, 1e-6
    buf = ReplayBuffer(4, FIELDS, alpha=alpha, priority_eps=eps, seed=0)
    buf.add(make_batch(0, 4), priorities=np.full(4, 2.0))
    res = buf.sample(4, beta=0.4)
    # Overwrite slots 0 and 1 (ids 0, 1 -> 4, 5); slots 2, 3 keep ids 2, 3.
    buf.add(make_batch(4, 2), priorities=np.full(2, 0.5))
    before = buf.state_dict()["priorities"]
    new = np.full(len(res.indices), 7.0)
    applied = buf.update_priorities(res.indices, res.ids, new)
    fresh = np.isin(res.indices, [2, 3])
    assert applied == int(fresh.sum())
    assert buf.stale_priority_updates == len(res.indices) - applied
    after = buf.state_dict()["priorities"]
    # Overwritten slots keep the priority of their new occupants.
    np.testing.assert_array_equal(after[:2], before[:2])
    np.testing.assert_allclose(after[:2], (0.5 + eps) ** alpha)
    touched = np.unique(res.indices[fresh])
    np.testing.assert_allclose(after[touched], (7.0 + eps) ** alpha)

    # Fully overwritten: everything is stale, nothing changes.
    buf.add(make_batch(6, 4))
    before = buf.state_dict()
    assert buf.update_priorities(np.arange(4), np.arange(4), np.full(4, 100.0)) == 0
    after = buf.state_dict()
    assert after.pop("stale_priority_updates") == before.pop("stale_priority_updates") + 4
    assert_state_equal(before, after)


def test_priority_update_for_never_written_slot_is_stale() -> None:
    buf = ReplayBuffer(4, FIELDS, seed=0)
    buf.add(make_batch(0, 1))
    assert buf.update_priorities(np.array([2]), np.array([-1]), np.array([5.0])) == 0
    assert buf.state_dict()["priorities"][2] == 0.0
    assert buf.stale_priority_updates == 1


@pytest.mark.parametrize(
    "idx, ids, prios",
    [
        ([0, 1], [0, 1], [1.0, -1.0]),
        ([0, 1], [0, 1], [1.0, np.nan]),
        ([0, 1], [0, 1], [np.inf, 1.0]),
        ([0, 1], [0, 1], [1.0]),
        ([0, 1], [0], [1.0, 1.0]),
        ([0, 4], [0, 1], [1.0, 1.0]),
        ([0.0, 1.0], [0, 1], [1.0, 1.0]),
        ([[0, 1]], [[0, 1]], [[1.0, 1.0]]),
    ],
)
def test_priority_update_rejects_bad_input(idx: list, ids: list, prios: list) -> None:
    buf = ReplayBuffer(4, FIELDS, seed=0)
    buf.add(make_batch(0, 4), priorities=np.arange(4.0))
    before = buf.state_dict()
    with pytest.raises(ValueError):
        buf.update_priorities(np.array(idx), np.array(ids), np.array(prios))
    assert_state_equal(before, buf.state_dict())


# ---------------------------------------------------------------- snapshots
def _busy_buffer(prioritized: bool) -> ReplayBuffer:
    buf = ReplayBuffer(16, FIELDS, prioritized=prioritized, alpha=0.5, seed=42)
    buf.add(make_batch(0, 20), priorities=np.linspace(0.0, 5.0, 20))
    res = buf.sample(8, beta=0.4)
    buf.add(make_batch(20, 3))
    buf.update_priorities(res.indices, res.ids, np.linspace(0.1, 9.0, 8))
    return buf


def _draws(buf: ReplayBuffer, n: int = 5) -> list[SampleResult]:
    return [buf.sample(6, beta=0.7) for _ in range(n)]


def _assert_same_draws(a: list[SampleResult], b: list[SampleResult]) -> None:
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.indices, y.indices)
        np.testing.assert_array_equal(x.ids, y.ids)
        np.testing.assert_array_equal(x.weights, y.weights)
        for k in x.data:
            np.testing.assert_array_equal(x.data[k], y.data[k])


@pytest.mark.parametrize("prioritized", [True, False])
def test_state_dict_round_trip_reproduces_samples(prioritized: bool, tmp_path) -> None:
    buf = _busy_buffer(prioritized)
    state = buf.state_dict()
    for v in state.values():
        assert isinstance(v, (np.ndarray, int, float))
    expected = _draws(buf)
    buf.add(make_batch(100, 5))  # mutate the original after the snapshot

    # Via a pickle-free file round trip into a fresh buffer.
    path = tmp_path / "replay.npz"
    np.savez(path, **state)
    with np.load(path, allow_pickle=False) as f:
        loaded = {k: f[k] for k in f.files}
    fresh = ReplayBuffer(16, FIELDS, prioritized=prioritized, alpha=0.5, seed=999)
    fresh.load_state_dict(loaded)
    _assert_same_draws(expected, _draws(fresh))
    assert fresh.sampled_total == buf.sampled_total - 0  # both drew the same amount
    assert fresh.inserted_total == 23 and fresh.size == 16

    # Restoring the original in place rewinds it too.
    buf.load_state_dict(state)
    _assert_same_draws(expected, _draws(buf))
    # And the subsequent write cursor matches.
    np.testing.assert_array_equal(buf.add(make_batch(50, 1)), fresh.add(make_batch(50, 1)))


def test_state_dict_is_a_copy() -> None:
    buf = _busy_buffer(True)
    state = buf.state_dict()
    snap = {k: np.copy(v) for k, v in state.items()}
    buf.add(make_batch(200, 16), priorities=np.full(16, 50.0))
    assert_state_equal(snap, state)


def test_load_state_dict_rejects_mismatch_without_changes() -> None:
    src = _busy_buffer(True).state_dict()
    buf = ReplayBuffer(16, FIELDS, alpha=0.5, seed=1)
    buf.add(make_batch(0, 3))
    before = buf.state_dict()
    bad_states = [
        {**src, "alpha": 0.6},
        {**src, "capacity": 8},
        {**src, "prioritized": 0},
        {k: v for k, v in src.items() if k != "ids"},
        {k: v for k, v in src.items() if k != "data.obs"},
        {**src, "data.extra": np.zeros(16)},
        {**src, "data.obs": src["data.obs"].astype(np.float64)},
        {**src, "priorities": np.full(16, np.nan)},
        {**src, "cursor": 16},
        {**src, "rng_state": np.zeros(5, np.uint64)},
    ]
    for bad in bad_states:
        with pytest.raises(ValueError):
            buf.load_state_dict(bad)
        assert_state_equal(before, buf.state_dict())


# ---------------------------------------------------------------- validation
@pytest.mark.parametrize(
    "kwargs",
    [
        {"capacity": 0},
        {"capacity": -1},
        {"capacity": 2.5},
        {"fields": {}},
        {"fields": {"obs": (3,)}},
        {"alpha": -0.1},
        {"alpha": 1.5},
        {"alpha": float("nan")},
        {"priority_eps": 0.0},
        {"priority_eps": float("inf")},
        {"seed": -1},
        {"prioritized": 1},
    ],
)
def test_constructor_validation(kwargs: dict) -> None:
    args = {"capacity": 4, "fields": FIELDS, **kwargs}
    capacity, fields = args.pop("capacity"), args.pop("fields")
    with pytest.raises(ValueError):
        ReplayBuffer(capacity, fields, **args)


def test_field_spec_normalizes_and_rejects_objects() -> None:
    assert FieldSpec([2, 3], "float32") == FieldSpec((2, 3), np.dtype(np.float32))
    with pytest.raises(ValueError):
        FieldSpec((1,), np.dtype(object))
    with pytest.raises(ValueError):
        FieldSpec((-1,), np.dtype(np.float32))
