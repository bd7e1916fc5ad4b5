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
    """

    obs: np.ndarray  # (K, *obs_shape), obs_dtype
    action: np.ndarray  # (K,) int64
    reward: np.ndarray  # (K,) float32
    discount: np.ndarray  # (K,) float32
    next_obs: np.ndarray  # (K, *obs_shape), obs_dtype
    env_index: np.ndarray  # (K,) int64

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
    is rounded to float32, so results are reproducible bit for bit.

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
    The common path (no episode end) is a few vector operations over envs;
    per-env Python work happens only for envs whose episode just ended.
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
        self._obs = np.zeros((self.n, self.num_envs, *self.obs_shape), dtype=self.obs_dtype)
        self._act = np.zeros((self.n, self.num_envs), dtype=np.int64)
        self._rew = np.zeros((self.n, self.num_envs), dtype=np.float64)
        self._count = np.zeros(self.num_envs, dtype=np.int64)
        self._slot = 0  # ring slot the next add() writes to
        # gamma**j for j = 0..n, as Python floats so builder and reference agree.
        self._powers = [self.gamma**j for j in range(self.n + 1)]

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
    ) -> NStepTransitions | None:
        """Record one vector step and return the transitions it completes, or None.

        ``next_obs`` must be the true next observation of each env (the final
        observation for envs whose episode ended this step, see
        :func:`true_next_obs`). Rows of the result are ordered by env index,
        then by start step.
        """
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

        n = self.n
        slot = self._slot
        self._obs[slot] = obs
        self._act[slot] = actions
        self._rew[slot] = rewards
        self._slot = (slot + 1) % n
        self._count += 1

        done = terminated | truncated
        parts: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []

        # Common path: envs with a full window and no episode end emit the
        # transition starting n-1 steps ago (the oldest slot, i.e. slot + 1).
        full = np.flatnonzero((self._count == n) & ~done)
        if full.size:
            start = (slot + 1) % n
            acc = np.zeros(full.size, dtype=np.float64)
            for j in range(n):
                acc += self._powers[j] * self._rew[(start + j) % n, full]
            parts.append(
                (
                    full,
                    np.full(full.size, start, dtype=np.int64),
                    acc,
                    np.full(full.size, self._powers[n], dtype=np.float64),
                    full,
                )
            )
            self._count[full] = n - 1

        # Rare path: flush every pending start of envs whose episode ended.
        for env in np.flatnonzero(done):
            c = int(self._count[env])
            env_idx = np.full(c, env, dtype=np.int64)
            starts = np.empty(c, dtype=np.int64)
            sums = np.empty(c, dtype=np.float64)
            discounts = np.empty(c, dtype=np.float64)
            for m in range(c):
                k = c - m  # steps from this start through the final step
                start = (slot - k + 1) % n
                total = 0.0
                for j in range(k):
                    total += self._powers[j] * float(self._rew[(start + j) % n, env])
                starts[m] = start
                sums[m] = total
                discounts[m] = 0.0 if terminated[env] else self._powers[k]
            parts.append((env_idx, starts, sums, discounts, env_idx))
            self._count[env] = 0

        if not parts:
            return None
        env_index = np.concatenate([p[0] for p in parts])
        slots = np.concatenate([p[1] for p in parts])
        reward = np.concatenate([p[2] for p in parts])
        discount = np.concatenate([p[3] for p in parts])
        if len(parts) > 1:
            # Both blocks are already sorted by start within an env and each
            # env appears in only one block, so a stable sort by env suffices.
            order = np.argsort(env_index, kind="stable")
            env_index, slots, reward, discount = (
                env_index[order],
                slots[order],
                reward[order],
                discount[order],
            )
        return NStepTransitions(
            obs=self._obs[slots, env_index],  # fancy indexing copies
            action=self._act[slots, env_index],
            reward=reward.astype(np.float32),
            discount=discount.astype(np.float32),
            next_obs=next_obs[env_index].astype(self.obs_dtype, copy=True),
            env_index=env_index,
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
    done = np.flatnonzero(np.asarray(terminated, dtype=bool) | np.asarray(truncated, dtype=bool))
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
