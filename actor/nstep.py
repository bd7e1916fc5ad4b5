"""N-step transition assembly for a vector of environments.

Ape-X actors send n-step transitions, not raw steps, to replay: the learner
then only needs ``reward + discount * max_a Q(next_obs, a)`` and never has to
know about episode boundaries, because they are folded into ``discount``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class NStepTransitions:
    """A batch of K completed n-step transitions (all arrays have leading dim K).

    The learner's target is ``reward + discount * V(next_obs)``; ``discount``
    is already 0 where the episode terminated, so no separate done flag exists.
    ``action_value`` carries the Q(obs, action) the actor computed when it
    acted, so initial priorities need no second forward pass over ``obs``.
    """

    obs: np.ndarray  # (K, *obs_shape), obs_dtype
    action: np.ndarray  # (K,) int64
    reward: np.ndarray  # (K,) float32
    discount: np.ndarray  # (K,) float32
    next_obs: np.ndarray  # (K, *obs_shape), obs_dtype
    env_index: np.ndarray  # (K,) int64
    action_value: np.ndarray  # (K,) float32; NaN where add() was given no action_values
    ended: np.ndarray  # (K,) bool: flushed by an episode end, so next_obs is that episode's final observation

    def __len__(self) -> int:
        return int(self.action.shape[0])


class NStepBuilder:
    """Turn per-step experience from E environments into n-step transitions.

    Arithmetic. Let step ``t`` of env ``e`` have observation ``o_t``, action
    ``a_t``, reward ``r_t`` and true next observation ``o'_t`` (the final
    observation if the episode ended at ``t``). The transition starting at
    ``t`` covers ``k`` steps, ``1 <= k <= n``, and is::

        obs      = o_t
        action   = a_t
        reward   = sum_{j=0}^{k-1} gamma**j * r_{t+j}
        next_obs = o'_{t+k-1}            (the observation k steps after o_t)
        discount = 0                     if the episode terminated at t+k-1
                   gamma**k              otherwise (including truncation)

    Rewards are accumulated in float64 in increasing ``j`` (each term being
    ``gamma**j * r`` with ``gamma**j`` a Python float) and only the final sum
    is rounded to float32, so results are reproducible bit for bit. Each
    pending start keeps its running sum, and every step adds its term.

    Episode boundaries. Normally ``k = n`` and the transition starting at
    ``t`` is emitted by the ``add`` call for step ``t + n - 1``. When an
    episode ends at step ``T`` (terminated or truncated), every still-pending
    start ``t`` of that env (``T - n + 1 < t <= T``, and ``t = T - n + 1``
    itself if it has not been emitted) is emitted at once with
    ``k = T - t + 1``. Termination means the final observation has no value,
    so we never bootstrap through it (discount 0). Truncation is a time limit,
    not a property of the state, so we do bootstrap from the final observation
    with ``gamma**k``. If both flags are set, termination wins. Nothing carries
    over into the next episode: the env's first step after a boundary starts
    a fresh window.

    Layout. All envs step in lockstep, so a single ring index (``step % n``)
    addresses a pre-allocated ``(n, E, ...)`` buffer for every env; a slot is
    only overwritten after the transition starting there has been emitted.
    Each step costs a fixed number of vector operations over envs, episode
    ends included: the actor calls it for every vector step, so per-env
    Python work would cost more than the rest of the assembly.
    Inputs are copied into the buffer, so callers may reuse their arrays.
    """

    def __init__(
        self,
        num_envs: int,
        n: int,
        gamma: float,
        obs_shape: tuple[int, ...],
        obs_dtype: Any,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if not 0.0 <= gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {gamma}")
        self.num_envs = int(num_envs)
        self.n = int(n)
        self.gamma = float(gamma)
        self.obs_shape = tuple(int(d) for d in obs_shape)
        self.obs_dtype = np.dtype(obs_dtype)
        n, e = self.n, self.num_envs
        self._obs = np.zeros((n, e, *self.obs_shape), dtype=self.obs_dtype)
        self._act = np.zeros((n, e), dtype=np.int64)
        self._value = np.zeros((n, e), dtype=np.float32)
        # Running discounted reward sum of the start held in each slot (garbage once emitted, reset on reuse).
        self._return = np.zeros((n, e), dtype=np.float64)
        self._count = np.zeros(e, dtype=np.int64)
        self._one = np.ones(e, dtype=np.int64)  # array operands: a Python scalar costs each ufunc call extra
        self._most_pending = np.full(e, n - 1, dtype=np.int64)
        self._slot = 0  # ring slot the next add() writes to
        # gamma**j for j = 0..n, as Python floats so builder and reference agree.
        self._powers = [self.gamma**j for j in range(n + 1)]
        # _term_power[s][i]: gamma**(age of slot i) when slot s is the one just written (age 0).
        self._term_power = [
            np.asarray([self._powers[(s - i) % n] for i in range(n)], dtype=np.float64)[:, None] for s in range(n)
        ]
        # Emission works on an (E, n) grid of (env, pending start) pairs, oldest start first, so that the
        # grid's flat nonzero positions come out ordered by env, then start. Tables indexed by position:
        self._age = np.tile(np.arange(n - 1, -1, -1, dtype=np.int64), e)  # steps since the start
        self._age_grid = self._age.reshape(e, n)
        self._oldest = np.tile(np.arange(n) == 0, e).reshape(e, n)
        self._env_of = np.repeat(np.arange(e, dtype=np.int64), n)
        self._discount_of = np.asarray([self._powers[k + 1] for k in self._age], dtype=np.float32)
        # Per slot just written: each position's row in the flattened (n * E) ring buffers.
        self._ring_row = [(s - self._age) % n * e + self._env_of for s in range(n)]

    @property
    def pending(self) -> np.ndarray:
        """Per-env number of steps stored but not yet emitted (a copy, int64 (E,))."""
        return self._count.copy()

    def reset(self, env_indices: np.ndarray | list[int] | None = None) -> None:
        """Drop pending steps (all envs, or only ``env_indices``) without emitting them.

        Used when the actor restarts or an env is reset out of band, where the
        pending steps no longer lead anywhere meaningful.
        """
        if env_indices is None:
            self._count[:] = 0
        else:
            self._count[np.asarray(env_indices, dtype=np.int64)] = 0

    def add(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_obs: np.ndarray,
        action_values: np.ndarray | None = None,
    ) -> NStepTransitions | None:
        """Record one vector step and return the transitions it completes, or None.

        ``next_obs`` must be the true next observation of each env (the final
        observation for envs whose episode ended this step, see
        :func:`true_next_obs`). ``action_values`` (optional, (E,)) is each
        env's Q(obs, action), handed back with the transitions that start here.
        Rows of the result are ordered by env index, then by start step.
        """
        obs, actions, rewards, terminated, truncated, next_obs = self._check_step(
            obs, actions, rewards, terminated, truncated, next_obs, action_values
        )
        slot = self._slot
        self._obs[slot] = obs
        self._act[slot] = actions
        self._value[slot] = np.nan if action_values is None else action_values
        self._return[slot] = 0.0
        self._return += self._term_power[slot] * rewards  # term j = age of each pending start
        self._slot = (slot + 1) % self.n
        self._count += self._one
        return self._emit(slot, terminated, truncated, next_obs)

    def _check_step(
        self,
        obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminated: np.ndarray,
        truncated: np.ndarray,
        next_obs: np.ndarray,
        action_values: np.ndarray | None,
    ) -> tuple[np.ndarray, ...]:
        """The step's arrays as numpy (flags as bool), each checked against (E, ...) before anything is stored."""
        e = self.num_envs
        obs = np.asarray(obs)
        next_obs = np.asarray(next_obs)
        actions = np.asarray(actions)
        rewards = np.asarray(rewards)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        full_shape = (e, *self.obs_shape)
        if obs.shape != full_shape or next_obs.shape != full_shape:
            raise ValueError(f"obs and next_obs must have shape {full_shape}, got {obs.shape} and {next_obs.shape}")
        for name, arr in (
            ("actions", actions),
            ("rewards", rewards),
            ("terminated", terminated),
            ("truncated", truncated),
        ):
            if arr.shape != (e,):
                raise ValueError(f"{name} must have shape ({e},), got {arr.shape}")
        if action_values is not None and np.shape(action_values) != (e,):
            raise ValueError(f"action_values must have shape ({e},), got {np.shape(action_values)}")
        return obs, actions, rewards, terminated, truncated, next_obs

    def _emit(
        self, slot: int, terminated: np.ndarray, truncated: np.ndarray, next_obs: np.ndarray
    ) -> NStepTransitions | None:
        """The transitions the step just written into `slot` completes, and their starts forgotten.

        Envs whose episode ended flush every pending start (k = count .. 1 steps); the others emit
        their oldest start (k = n) if the window is full. count_nonzero and nonzero rather than any and
        flatnonzero: this runs every vector step, and they cost a fraction."""
        n, count = self.n, self._count
        done = terminated | truncated
        emit = self._age_grid < count[:, None]
        emit &= done[:, None] | self._oldest
        position = emit.ravel().nonzero()[0]
        if position.size == 0:
            return None
        env_index = self._env_of.take(position)
        row = self._ring_row[slot].take(position)
        discount = self._discount_of.take(position)
        ended = done.take(env_index)
        if np.count_nonzero(terminated):
            discount[terminated.take(env_index)] = 0.0
        np.minimum(count, self._most_pending, out=count)
        count[done] = 0
        return NStepTransitions(
            obs=self._obs.reshape(n * self.num_envs, *self.obs_shape).take(row, axis=0),
            action=self._act.ravel().take(row),
            reward=self._return.ravel().take(row).astype(np.float32),
            discount=discount,
            next_obs=next_obs.take(env_index, axis=0).astype(self.obs_dtype, copy=False),
            env_index=env_index,
            action_value=self._value.ravel().take(row),
            ended=ended,
        )


def true_next_obs(
    next_obs: np.ndarray,
    terminated: np.ndarray,
    truncated: np.ndarray,
    info: Mapping[str, Any],
) -> np.ndarray:
    """Return a copy of ``next_obs`` with finished envs' rows set to their final obs.

    In gymnasium's SAME_STEP autoreset mode the vector env returns the first
    observation of the *new* episode for envs that just finished and puts the
    real last observation in ``info["final_obs"][i]``; n-step targets (notably
    truncation bootstraps) need the latter.
    """
    out = np.array(next_obs, copy=True)
    done = (np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool)).nonzero()[0]
    if done.size == 0:
        return out
    final = info.get("final_obs")
    if final is None:
        raise ValueError("an env finished but info has no 'final_obs'; is the vector env in SAME_STEP autoreset mode?")
    for i in done:
        if final[i] is None:
            raise ValueError(f"env {i} finished but info['final_obs'][{i}] is None")
        out[i] = final[i]
    return out
