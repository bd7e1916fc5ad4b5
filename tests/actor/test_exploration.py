"""Tests for actor.exploration."""

from __future__ import annotations

import numpy as np
import pytest

from actor.exploration import epsilon_greedy
from common.epsilon_ladder import apex_epsilon


def test_apex_epsilon_endpoints_for_eight_actors() -> None:
    assert apex_epsilon(0, 8) == pytest.approx(0.4)
    assert apex_epsilon(7, 8) == pytest.approx(0.4**8)
    # Middle actor: 0.4 ** (1 + 7 * 3 / 7) = 0.4 ** 4
    assert apex_epsilon(3, 8) == pytest.approx(0.4**4)


def test_apex_epsilon_is_decreasing_across_population() -> None:
    values = [apex_epsilon(i, 8) for i in range(8)]
    assert all(a > b for a, b in zip(values, values[1:], strict=False))


def test_apex_epsilon_single_actor_gets_base() -> None:
    assert apex_epsilon(0, 1) == 0.4
    assert apex_epsilon(5, 1, base=0.25) == 0.25


def test_apex_epsilon_wraps_large_indices() -> None:
    for i in range(8):
        assert apex_epsilon(i + 8, 8) == apex_epsilon(i, 8)
        assert apex_epsilon(i + 24, 8) == apex_epsilon(i, 8)


def test_apex_epsilon_custom_parameters() -> None:
    assert apex_epsilon(1, 3, base=0.5, alpha=2.0) == pytest.approx(0.5**2)
    assert apex_epsilon(2, 3, base=0.5, alpha=2.0) == pytest.approx(0.5**3)


@pytest.mark.parametrize(
    ("index", "population", "base", "alpha"),
    [
        (0, 0, 0.4, 7.0),
        (0, -3, 0.4, 7.0),
        (-1, 8, 0.4, 7.0),
        (0, 8, 0.0, 7.0),
        (0, 8, 1.5, 7.0),
        (0, 8, -0.2, 7.0),
        (0, 8, 0.4, -1.0),
    ],
)
def test_apex_epsilon_validation(index: int, population: int, base: float, alpha: float) -> None:
    with pytest.raises(ValueError):
        apex_epsilon(index, population, base=base, alpha=alpha)


def test_apex_epsilon_base_one_is_allowed() -> None:
    assert apex_epsilon(3, 8, base=1.0) == 1.0


def test_epsilon_zero_is_argmax() -> None:
    rng = np.random.default_rng(0)
    q = rng.normal(size=(256, 6))
    actions = epsilon_greedy(q, 0.0, rng)
    assert actions.dtype == np.int64
    assert actions.shape == (256,)
    np.testing.assert_array_equal(actions, q.argmax(axis=1))


def test_epsilon_one_is_roughly_uniform() -> None:
    rng = np.random.default_rng(1)
    num_actions, batch = 4, 20_000
    q = np.zeros((batch, num_actions))
    q[:, 2] = 1.0  # greedy would always pick 2
    actions = epsilon_greedy(q, 1.0, rng)
    counts = np.bincount(actions, minlength=num_actions)
    assert counts.shape == (num_actions,)
    # Expected 5000 each, std ~61; a +-400 band is loose but still catches bias.
    assert np.all(np.abs(counts - batch / num_actions) < 400), counts


def test_intermediate_epsilon_mixes() -> None:
    rng = np.random.default_rng(2)
    batch = 20_000
    q = np.zeros((batch, 5))
    q[:, 0] = 1.0
    actions = epsilon_greedy(q, 0.3, rng)
    # P(non-greedy) = 0.3 * 4/5 = 0.24
    frac = np.mean(actions != 0)
    assert abs(frac - 0.24) < 0.02, frac


def test_per_row_epsilon() -> None:
    rng = np.random.default_rng(3)
    batch = 4000
    q = np.zeros((batch, 3))
    q[:, 1] = 1.0
    eps = np.where(np.arange(batch) % 2 == 0, 0.0, 1.0)
    actions = epsilon_greedy(q, eps, rng)
    assert np.all(actions[0::2] == 1)  # epsilon 0 rows always greedy
    odd_counts = np.bincount(actions[1::2], minlength=3)
    assert np.all(np.abs(odd_counts - batch / 2 / 3) < 200), odd_counts


def test_epsilon_greedy_is_reproducible_with_seed() -> None:
    q = np.random.default_rng(4).normal(size=(64, 4))
    a = epsilon_greedy(q, 0.5, np.random.default_rng(9))
    b = epsilon_greedy(q, 0.5, np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)


def test_epsilon_greedy_validation() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError):
        epsilon_greedy(np.zeros(4), 0.1, rng)
    with pytest.raises(ValueError):
        epsilon_greedy(np.zeros((3, 2)), np.array([0.1, 0.2]), rng)
    with pytest.raises(ValueError):
        epsilon_greedy(np.zeros((3, 2)), 1.5, rng)
    with pytest.raises(ValueError):
        epsilon_greedy(np.zeros((3, 2)), np.array([0.1, -0.1, 0.0]), rng)
