"""Tests for actor.nstep: hand-computed cases, a real vector env, and a property test."""

from __future__ import annotations

from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from hypothesis import given, settings
from hypothesis import strategies as st

from actor.nstep import NStepBuilder, NStepTransitions, true_next_obs

FINAL = 1000.0  # marker added to the step id in final observations


# ---------------------------------------------------------------------------
# Synthetic driver: obs of env e at step t is [t, e]; the next obs is [t+1, e]
# mid-episode and [FINAL + t, e] when the episode ends at t, so a test can see
# whether next_obs came from the final observation.
# ---------------------------------------------------------------------------


def drive(
    builder: NStepBuilder,
    rewards: list[list[float]],
    terminated: list[list[bool]] | None = None,
    truncated: list[list[bool]] | None = None,
) -> list[NStepTransitions | None]:
    """Feed T steps (indexed [t][env]) into ``builder``; return each add() result."""
    rew = np.asarray(rewards, dtype=np.float64)
    steps, envs = rew.shape
    term = np.zeros((steps, envs), bool) if terminated is None else np.asarray(terminated, bool)
    trunc = np.zeros((steps, envs), bool) if truncated is None else np.asarray(truncated, bool)
    env_ids = np.arange(envs, dtype=np.float32)
    outs = []
    for t in range(steps):
        obs = np.stack([np.full(envs, t, np.float32), env_ids], axis=1)
        done = term[t] | trunc[t]
        nxt = np.stack([np.where(done, FINAL + t, t + 1).astype(np.float32), env_ids], axis=1)
        actions = np.full(envs, 10 + t, dtype=np.int64)
        outs.append(builder.add(obs, actions, rew[t], term[t], trunc[t], nxt))
    return outs


def rows(out: NStepTransitions | None) -> list[tuple[int, int, float, float, float, int]]:
    """(env, start step, reward, discount, next-obs step id, action) per row."""
    if out is None:
        return []
    # Column 1 of obs/next_obs holds the env id: rows must not mix envs.
    assert np.array_equal(out.obs[:, 1], out.env_index)
    assert np.array_equal(out.next_obs[:, 1], out.env_index)
    return [
        (
            int(out.env_index[i]),
            int(out.obs[i, 0]),
            float(out.reward[i]),
            float(out.discount[i]),
            float(out.next_obs[i, 0]),
            int(out.action[i]),
        )
        for i in range(len(out))
    ]


def assert_rows(out: NStepTransitions | None, expected: list[tuple[int, int, float, float, float]]) -> None:
    """Compare against hand-computed (env, start, reward, discount, next id) rows."""
    got = rows(out)
    assert len(got) == len(expected), (got, expected)
    for g, e in zip(got, expected, strict=True):
        env, start, reward, discount, next_id, action = g
        assert (env, start, next_id) == (e[0], e[1], e[4]), (g, e)
        assert action == 10 + start
        assert reward == pytest.approx(e[2], rel=1e-6), (g, e)
        assert discount == pytest.approx(e[3], rel=1e-6, abs=0.0), (g, e)


def make(num_envs: int = 1, n: int = 3, gamma: float = 0.9) -> NStepBuilder:
    return NStepBuilder(num_envs, n, gamma, (2,), np.float32)


# ------------------------------- hand-computed -------------------------------


def test_mid_episode_emission() -> None:
    b = make()
    outs = drive(b, [[1.0], [2.0], [3.0], [4.0], [5.0]])
    assert outs[0] is None and outs[1] is None
    # 1 + 0.9*2 + 0.81*3 = 5.23 ; 2 + 0.9*3 + 0.81*4 = 7.94 ; 3 + 3.6 + 4.05 = 10.65
    assert_rows(outs[2], [(0, 0, 5.23, 0.729, 3)])
    assert_rows(outs[3], [(0, 1, 7.94, 0.729, 4)])
    assert_rows(outs[4], [(0, 2, 10.65, 0.729, 5)])
    out = outs[4]
    assert out is not None
    assert out.obs.dtype == np.float32 and out.next_obs.dtype == np.float32
    assert out.action.dtype == np.int64 and out.env_index.dtype == np.int64
    assert out.reward.dtype == np.float32 and out.discount.dtype == np.float32
    assert b.pending.tolist() == [2]


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        (0, {0: [(0, 0, 1.0, 0.0, FINAL + 0)]}),
        (1, {1: [(0, 0, 2.8, 0.0, FINAL + 1), (0, 1, 2.0, 0.0, FINAL + 1)]}),
        (
            2,
            {2: [(0, 0, 5.23, 0.0, FINAL + 2), (0, 1, 4.7, 0.0, FINAL + 2), (0, 2, 3.0, 0.0, FINAL + 2)]},
        ),
        (
            4,
            {
                2: [(0, 0, 5.23, 0.729, 3)],
                3: [(0, 1, 7.94, 0.729, 4)],
                4: [(0, 2, 10.65, 0.0, FINAL + 4), (0, 3, 8.5, 0.0, FINAL + 4), (0, 4, 5.0, 0.0, FINAL + 4)],
            },
        ),
    ],
)
def test_termination_at_offsets(end: int, expected: dict[int, list]) -> None:
    b = make()
    rewards = [[float(t + 1)] for t in range(end + 1)]
    term = [[t == end] for t in range(end + 1)]
    outs = drive(b, rewards, terminated=term)
    for t, out in enumerate(outs):
        assert_rows(out, expected.get(t, []))
    assert b.pending.tolist() == [0]


@pytest.mark.parametrize(
    ("end", "expected"),
    [
        (0, {0: [(0, 0, 1.0, 0.9, FINAL + 0)]}),
        (1, {1: [(0, 0, 2.8, 0.81, FINAL + 1), (0, 1, 2.0, 0.9, FINAL + 1)]}),
        (
            2,
            {
                2: [
                    (0, 0, 5.23, 0.729, FINAL + 2),
                    (0, 1, 4.7, 0.81, FINAL + 2),
                    (0, 2, 3.0, 0.9, FINAL + 2),
                ]
            },
        ),
        (
            4,
            {
                2: [(0, 0, 5.23, 0.729, 3)],
                3: [(0, 1, 7.94, 0.729, 4)],
                4: [
                    (0, 2, 10.65, 0.729, FINAL + 4),
                    (0, 3, 8.5, 0.81, FINAL + 4),
                    (0, 4, 5.0, 0.9, FINAL + 4),
                ],
            },
        ),
    ],
)
def test_truncation_bootstraps_from_final_obs(end: int, expected: dict[int, list]) -> None:
    b = make()
    rewards = [[float(t + 1)] for t in range(end + 1)]
    trunc = [[t == end] for t in range(end + 1)]
    outs = drive(b, rewards, truncated=trunc)
    for t, out in enumerate(outs):
        assert_rows(out, expected.get(t, []))
    assert b.pending.tolist() == [0]


def test_terminated_and_truncated_together_does_not_bootstrap() -> None:
    b = make()
    outs = drive(b, [[1.0], [2.0]], terminated=[[False], [True]], truncated=[[False], [True]])
    assert_rows(outs[1], [(0, 0, 2.8, 0.0, FINAL + 1), (0, 1, 2.0, 0.0, FINAL + 1)])


def test_two_envs_ending_at_different_steps_and_fresh_episodes() -> None:
    b = make(num_envs=2)
    rewards = [[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 40.0], [5.0, 50.0], [6.0, 60.0]]
    term = [[t == 1, False] for t in range(6)]
    trunc = [[False, t == 4] for t in range(6)]
    outs = drive(b, rewards, terminated=term, truncated=trunc)
    assert outs[0] is None
    # env 0 terminates at step 1; env 1 has only 2 steps pending, nothing to emit.
    assert_rows(outs[1], [(0, 0, 2.8, 0.0, FINAL + 1), (0, 1, 2.0, 0.0, FINAL + 1)])
    # env 1: 10 + 18 + 24.3; env 0 restarted at step 2 and has 1 pending step.
    assert_rows(outs[2], [(1, 0, 52.3, 0.729, 3)])
    # env 1: 20 + 27 + 32.4; env 0 has 2 pending (none from the old episode).
    assert_rows(outs[3], [(1, 1, 79.4, 0.729, 4)])
    # env 0 regular emission (3 + 3.6 + 4.05) in the same call as env 1's
    # truncation flush (30+36+40.5, 40+45, 50); rows ordered by env then start.
    assert_rows(
        outs[4],
        [
            (0, 2, 10.65, 0.729, 5),
            (1, 2, 106.5, 0.729, FINAL + 4),
            (1, 3, 85.0, 0.81, FINAL + 4),
            (1, 4, 50.0, 0.9, FINAL + 4),
        ],
    )
    # env 0: 4 + 4.5 + 4.86; env 1 restarted at step 5.
    assert_rows(outs[5], [(0, 3, 13.36, 0.729, 6)])
    assert b.pending.tolist() == [2, 1]


def test_flush_and_regular_emission_order_when_lower_env_ends() -> None:
    b = make(num_envs=2, n=2)
    outs = drive(b, [[1.0, 3.0], [2.0, 4.0]], terminated=[[False, False], [True, False]])
    # env 0 flushes (1 + 0.9*2, then 2); env 1 emits normally (3 + 0.9*4).
    assert_rows(
        outs[1],
        [(0, 0, 2.8, 0.0, FINAL + 1), (0, 1, 2.0, 0.0, FINAL + 1), (1, 0, 6.6, 0.81, 2)],
    )


def test_n_equals_one_gives_one_step_transitions() -> None:
    b = make(n=1)
    outs = drive(
        b,
        [[1.0], [2.0], [3.0], [4.0]],
        terminated=[[False], [False], [True], [False]],
        truncated=[[False], [True], [False], [False]],
    )
    assert_rows(outs[0], [(0, 0, 1.0, 0.9, 1)])
    assert_rows(outs[1], [(0, 1, 2.0, 0.9, FINAL + 1)])
    assert_rows(outs[2], [(0, 2, 3.0, 0.0, FINAL + 2)])
    assert_rows(outs[3], [(0, 3, 4.0, 0.9, 4)])
    assert b.pending.tolist() == [0]


def test_stored_inputs_are_copied() -> None:
    b = make()
    obs = np.zeros((1, 2), np.float32)
    nxt = np.zeros((1, 2), np.float32)
    act = np.zeros(1, np.int64)
    rew = np.zeros(1)
    no = np.zeros(1, bool)
    out = None
    for t in range(3):
        obs[:] = t
        nxt[:] = t + 1
        act[:] = t
        rew[:] = t + 1
        out = b.add(obs, act, rew, no, no, nxt)
    assert out is not None
    obs[:] = -1
    nxt[:] = -1
    act[:] = -1
    assert out.obs[0].tolist() == [0.0, 0.0]
    assert out.action.tolist() == [0]
    assert out.next_obs[0].tolist() == [3.0, 3.0]
    assert out.reward[0] == pytest.approx(5.23)


def test_action_values_follow_their_start_step_and_ended_marks_flushed_rows() -> None:
    b = make(num_envs=2)
    obs = np.zeros((2, 2), np.float32)
    no = np.zeros(2, bool)
    outs = []
    for t in range(4):
        term = np.array([t == 3, False])
        outs.append(b.add(obs, np.zeros(2, np.int64), np.ones(2), term, no, obs, np.array([t, 10 + t], np.float32)))
    assert outs[1] is None
    assert outs[2] is not None
    assert outs[2].action_value.tolist() == [0.0, 10.0] and outs[2].ended.tolist() == [False, False]
    # Env 0 ends at step 3 and flushes all its pending starts (1, 2, 3); env 1 emits start 1 as usual.
    out = outs[3]
    assert out is not None
    assert out.env_index.tolist() == [0, 0, 0, 1]
    assert out.action_value.tolist() == [1.0, 2.0, 3.0, 11.0]
    assert out.ended.tolist() == [True, True, True, False]


def test_action_values_are_nan_when_not_given() -> None:
    outs = drive(make(), [[1.0], [2.0], [3.0]])
    out = outs[2]
    assert out is not None
    assert np.isnan(out.action_value).all() and out.action_value.dtype == np.float32


def test_reset_drops_pending() -> None:
    b = make(num_envs=2)
    drive(b, [[1.0, 1.0], [1.0, 1.0]])
    assert b.pending.tolist() == [2, 2]
    b.reset([1])
    assert b.pending.tolist() == [2, 0]
    b.reset()
    assert b.pending.tolist() == [0, 0]
    # After a reset the next step starts a fresh window: nothing old is emitted.
    outs = drive(b, [[5.0, 5.0]], terminated=[[True, True]])
    out = outs[0]
    assert out is not None and len(out) == 2
    assert out.reward.tolist() == [5.0, 5.0]


def test_validation_errors() -> None:
    with pytest.raises(ValueError):
        NStepBuilder(0, 3, 0.9, (2,), np.float32)
    with pytest.raises(ValueError):
        NStepBuilder(1, 0, 0.9, (2,), np.float32)
    with pytest.raises(ValueError):
        NStepBuilder(1, 3, 1.5, (2,), np.float32)
    b = make(num_envs=2)
    ok_obs = np.zeros((2, 2), np.float32)
    ok = np.zeros(2)
    no = np.zeros(2, bool)
    with pytest.raises(ValueError):
        b.add(np.zeros((2, 3), np.float32), ok, ok, no, no, ok_obs)
    with pytest.raises(ValueError):
        b.add(ok_obs, np.zeros(3), ok, no, no, ok_obs)
    with pytest.raises(ValueError):
        b.add(ok_obs, ok, ok, no, np.zeros(1, bool), ok_obs)
    assert b.pending.tolist() == [0, 0]


# ------------------------------ brute reference ------------------------------


@dataclass
class Trajectory:
    """One env's recorded steps (all envs step in lockstep, so index = step)."""

    obs: list[np.ndarray] = field(default_factory=list)
    action: list[int] = field(default_factory=list)
    reward: list[float] = field(default_factory=list)
    terminated: list[bool] = field(default_factory=list)
    truncated: list[bool] = field(default_factory=list)
    next_obs: list[np.ndarray] = field(default_factory=list)


Row = tuple[int, int, bytes, int, np.float32, np.float32, bytes]


def reference(trajs: list[Trajectory], n: int, gamma: float) -> tuple[list[Row], list[int]]:
    """Brute-force n-step transitions straight from the definition.

    Returns rows (emit step, env, obs bytes, action, reward, discount,
    next_obs bytes) sorted by emit step, env, start, plus per-env pending counts.
    """
    out: list[tuple[int, int, int, Row]] = []
    pending = []
    for env, tr in enumerate(trajs):
        steps = len(tr.reward)
        ends = [s for s in range(steps) if tr.terminated[s] or tr.truncated[s]]
        left = 0
        for t in range(steps):
            end = next((s for s in ends if s >= t), None)
            if end is not None and end - t + 1 <= n:
                k = end - t + 1
            elif t + n - 1 < steps:
                k = n
            else:
                left += 1
                continue
            last = t + k - 1
            total = 0.0
            for j in range(k):
                total += gamma**j * float(tr.reward[t + j])
            disc = 0.0 if tr.terminated[last] else gamma**k
            row: Row = (
                last,
                env,
                tr.obs[t].tobytes(),
                tr.action[t],
                np.float32(total),
                np.float32(disc),
                tr.next_obs[last].tobytes(),
            )
            out.append((last, env, t, row))
        pending.append(left)
    out.sort(key=lambda x: x[:3])
    return [r for *_, r in out], pending


def builder_rows(step: int, out: NStepTransitions | None) -> list[Row]:
    if out is None:
        return []
    return [
        (
            step,
            int(out.env_index[i]),
            out.obs[i].tobytes(),
            int(out.action[i]),
            out.reward[i],
            out.discount[i],
            out.next_obs[i].tobytes(),
        )
        for i in range(len(out))
    ]


def assert_same_rows(got: list[Row], want: list[Row]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[:4] == w[:4], (g[:4], w[:4])
        # Exact: builder and reference use the same float64 accumulation order.
        assert g[4] == w[4] and g[5] == w[5], (g, w)
        assert g[6] == w[6]


def test_real_vector_env_matches_reference() -> None:
    num_envs, n, gamma, steps = 4, 3, 0.97, 300
    env = gym.make_vec(
        "CartPole-v1",
        num_envs=num_envs,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
        max_episode_steps=12,
    )
    try:
        obs, _ = env.reset(seed=123)
        env.action_space.seed(123)
        space = env.single_observation_space
        b = NStepBuilder(num_envs, n, gamma, space.shape, space.dtype)
        trajs = [Trajectory() for _ in range(num_envs)]
        got: list[Row] = []
        n_term = n_trunc = 0
        for t in range(steps):
            actions = env.action_space.sample()
            nxt, rew, term, trunc, info = env.step(actions)
            real_next = true_next_obs(nxt, term, trunc, info)

            # true_next_obs: finished rows come from final_obs, others untouched,
            # and the env's own returned array is left alone.
            done = term | trunc
            assert real_next is not nxt
            for i in range(num_envs):
                if done[i]:
                    assert info["_final_obs"][i]
                    np.testing.assert_array_equal(real_next[i], info["final_obs"][i])
                else:
                    np.testing.assert_array_equal(real_next[i], nxt[i])
            if done.any():
                assert not np.array_equal(real_next[done], nxt[done])

            for i in range(num_envs):
                tr = trajs[i]
                tr.obs.append(obs[i].copy())
                tr.action.append(int(actions[i]))
                tr.reward.append(float(rew[i]))
                tr.terminated.append(bool(term[i]))
                tr.truncated.append(bool(trunc[i]))
                tr.next_obs.append(real_next[i].copy())
            n_term += int(term.sum())
            n_trunc += int((trunc & ~term).sum())

            got += builder_rows(t, b.add(obs, actions, rew, term, trunc, real_next))
            obs = nxt
    finally:
        env.close()

    # The scenario must exercise both kinds of episode end.
    assert n_term > 0 and n_trunc > 0
    # Sanity of the recording itself: within an episode obs chain up exactly.
    for tr in trajs:
        for t in range(steps - 1):
            if not (tr.terminated[t] or tr.truncated[t]):
                np.testing.assert_array_equal(tr.obs[t + 1], tr.next_obs[t])

    want, want_pending = reference(trajs, n, gamma)
    assert_same_rows(got, want)
    assert b.pending.tolist() == want_pending
    assert sum(1 for r in got if r[5] == 0.0) > 0  # some terminal transitions


def test_true_next_obs_without_finished_envs_is_a_copy() -> None:
    nxt = np.arange(6, dtype=np.float32).reshape(3, 2)
    no = np.zeros(3, bool)
    out = true_next_obs(nxt, no, no, {})
    np.testing.assert_array_equal(out, nxt)
    out[0] = -1
    assert nxt[0, 0] == 0.0


def test_true_next_obs_requires_final_obs() -> None:
    nxt = np.zeros((2, 2), np.float32)
    with pytest.raises(ValueError):
        true_next_obs(nxt, np.array([True, False]), np.array([False, False]), {})
    final = np.array([None, None], dtype=object)
    with pytest.raises(ValueError):
        true_next_obs(nxt, np.array([True, False]), np.array([False, False]), {"final_obs": final})


# ------------------------------ property test --------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[int, float, np.ndarray, np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 5))
    gamma = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]))
    envs = draw(st.integers(1, 3))
    steps = draw(st.integers(1, 25))
    size = steps * envs
    rewards = draw(st.lists(st.floats(-10, 10, allow_nan=False, width=32), min_size=size, max_size=size))
    # 0 = continue, 1 = terminated, 2 = truncated, 3 = both; ends kept fairly common.
    kinds = draw(st.lists(st.sampled_from([0, 0, 0, 1, 2, 3]), min_size=size, max_size=size))
    kind = np.asarray(kinds).reshape(steps, envs)
    return (
        n,
        gamma,
        np.asarray(rewards, np.float64).reshape(steps, envs),
        (kind == 1) | (kind == 3),
        (kind == 2) | (kind == 3),
    )


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_property_matches_reference(
    scenario: tuple[int, float, np.ndarray, np.ndarray, np.ndarray],
) -> None:
    n, gamma, rewards, term, trunc = scenario
    steps, envs = rewards.shape
    b = NStepBuilder(envs, n, gamma, (2,), np.int64)
    trajs = [Trajectory() for _ in range(envs)]
    got: list[Row] = []
    env_ids = np.arange(envs)
    for t in range(steps):
        obs = np.stack([np.full(envs, t), env_ids], axis=1)
        # Distinct values for final vs. next-episode observations.
        done = term[t] | trunc[t]
        nxt = np.stack([np.where(done, -(t + 1), t + 1), env_ids], axis=1)
        actions = (t * 7 + env_ids) % 5
        for e in range(envs):
            tr = trajs[e]
            tr.obs.append(obs[e].copy())
            tr.action.append(int(actions[e]))
            tr.reward.append(float(rewards[t, e]))
            tr.terminated.append(bool(term[t, e]))
            tr.truncated.append(bool(trunc[t, e]))
            tr.next_obs.append(nxt[e].copy())
        out = b.add(obs, actions, rewards[t], term[t], trunc[t], nxt, action_values=(t * 10 + env_ids) / 4)
        got += builder_rows(t, out)
        if out is not None:
            # Each row carries the value given with its start step, and says whether an episode end flushed it.
            start = out.obs[:, 0]
            np.testing.assert_array_equal(out.action_value, ((start * 10 + out.env_index) / 4).astype(np.float32))
            assert out.action_value.dtype == np.float32
            np.testing.assert_array_equal(out.ended, done[out.env_index])

    want, want_pending = reference(trajs, n, gamma)
    assert_same_rows(got, want)
    assert b.pending.tolist() == want_pending

    # Every step starts exactly one transition: emitted once, or still pending
    # (and then it is among the env's most recent steps).
    starts: dict[int, list[int]] = {e: [] for e in range(envs)}
    for _, env, obs_bytes, *_ in got:
        starts[env].append(int(np.frombuffer(obs_bytes, dtype=np.int64)[0]))
    pending = b.pending
    for e in range(envs):
        assert sorted(starts[e]) == list(range(steps - int(pending[e])))
        assert len(set(starts[e])) == len(starts[e])
        assert 0 <= pending[e] <= n - 1

    # Ending every episode now flushes exactly the pending steps.
    final = np.stack([np.full(envs, -10_000), env_ids], axis=1)
    last = b.add(final, np.zeros(envs, np.int64), np.zeros(envs), np.ones(envs, bool), np.zeros(envs, bool), final)
    assert last is not None
    assert np.bincount(last.env_index, minlength=envs).tolist() == (pending + 1).tolist()
    assert np.all(last.discount == 0.0)
    assert b.pending.tolist() == [0] * envs
