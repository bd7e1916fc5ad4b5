"""Tests for actor.exploration."""

from __future__ import annotations

import numpy as np
import pytest

from actor.exploration import epsilon_greedy
from common.epsilon_ladder import apex_epsilon, slot_epsilons


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


def test_slot_epsilons_over_actors_repeat_the_actors_epsilon() -> None:
    for index in range(5):  # 3 and 4: joiners beyond N = 3
        assert slot_epsilons(index, 4, 3, 0.4, 7.0, "actors") == [apex_epsilon(index % 3, 3)] * 4


def test_slot_epsilons_over_slots_are_the_apex_formula_over_every_env_slot() -> None:
    """Slot j of actor i is g = i * E + j of N * E: 2 actors x 4 envs are one ladder of 8 rungs."""
    ladder = [0.4 ** (1 + 7.0 * g / 7) for g in range(8)]
    assert slot_epsilons(0, 4, 2, over="slots") == pytest.approx(ladder[:4], rel=1e-12)
    assert slot_epsilons(1, 4, 2, over="slots") == pytest.approx(ladder[4:], rel=1e-12)
    assert slot_epsilons(1, 4, 2, over="slots")[-1] == pytest.approx(0.4**8)  # the same ends as over actors
    alpha3 = [0.4 ** (1 + 3.0 * g / 11) for g in range(12)]  # 3 actors x 4 envs, alpha 3
    assert sum((slot_epsilons(i, 4, 3, 0.4, 3.0, "slots") for i in range(3)), []) == pytest.approx(alpha3)


def test_slot_epsilons_joiners_beyond_the_population_repeat_its_slots() -> None:
    for index in range(2, 7):
        assert slot_epsilons(index, 4, 2, over="slots") == slot_epsilons(index % 2, 4, 2, over="slots")


def test_slot_epsilons_edge_cases() -> None:
    assert slot_epsilons(0, 3, 1, 0.5, 2.0, "slots") == pytest.approx([0.5, 0.5**2, 0.5**3])  # N = 1: a ladder still
    assert slot_epsilons(5, 1, 1, 0.5, 2.0, "slots") == [0.5]  # one slot in all: the base, as one actor
    assert slot_epsilons(1, 1, 3, over="slots") == [apex_epsilon(1, 3)]  # E = 1: the actors' ladder
    for bad in ({"over": "envs"}, {"num_envs": 0}, {"population": 0}, {"index": -1}):
        args = {"index": 0, "num_envs": 4, "population": 2, "over": "slots", **bad}
        with pytest.raises(ValueError):
            slot_epsilons(**args)


def test_slots_leave_less_of_the_experience_all_but_greedy_with_few_actors() -> None:
    """The issue with 2 actors: half the slots at 0.4 ** 8 over actors; over slots only the 3 of 8 below 0.01."""
    over_actors = [e for i in range(2) for e in slot_epsilons(i, 4, 2, over="actors")]
    over_slots = [e for i in range(2) for e in slot_epsilons(i, 4, 2, over="slots")]
    assert sum(e < 0.01 for e in over_actors) == 4 and sum(e < 0.01 for e in over_slots) == 3
    assert sorted(set(over_actors)) == pytest.approx([0.4**8, 0.4]) and len(set(over_slots)) == 8
    assert min(over_slots) == pytest.approx(min(over_actors)) and max(over_slots) == max(over_actors)


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
