"""Epsilon-greedy action choice for Ape-X actors.

Ape-X gives every actor its own fixed epsilon instead of annealing one schedule (the ladder is
`common.epsilon_ladder`, which the learner uses too); this module spends it on the actions.
"""

from __future__ import annotations

import numpy as np


def epsilon_greedy(q_values: np.ndarray, epsilon: float | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pick one action per row of ``q_values`` (shape (B, A)), epsilon-greedily.

    Each row independently takes a uniformly random action with probability
    ``epsilon`` (a scalar, or one value per row so a single batched forward
    pass can serve envs with different exploration rates), else its argmax.
    Random numbers are drawn for every row regardless of the outcome so the
    rng stream does not depend on the Q-values. Returns int64 actions (B,).
    """
    q = np.asarray(q_values)
    if q.ndim != 2 or q.shape[1] < 1:
        raise ValueError(f"q_values must have shape (B, A) with A >= 1, got {q.shape}")
    return choose_actions(q, check_epsilon(epsilon, q.shape[0]), rng)


def check_epsilon(epsilon: float | np.ndarray, batch: int) -> float | np.ndarray:
    """`epsilon` as `choose_actions` takes it: a float in [0, 1], or a float64 vector of `batch` of them."""
    if isinstance(epsilon, (float, int)):  # checked without numpy
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon values must lie in [0, 1]")
        return float(epsilon)
    eps = np.asarray(epsilon, dtype=np.float64)
    if eps.ndim not in (0, 1) or (eps.ndim == 1 and eps.shape[0] != batch):
        raise ValueError(f"epsilon must be a scalar or shape ({batch},), got {eps.shape}")
    if np.any(~((eps >= 0.0) & (eps <= 1.0))):
        raise ValueError("epsilon values must lie in [0, 1]")
    return eps


def choose_actions(q: np.ndarray, epsilon: float | np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`epsilon_greedy` without its checks, for a caller that checked its epsilon once (`check_epsilon`)
    and passes Q-values of shape (B, A) from its own network: an actor's epsilons never change, and
    checking them again every step would cost more than the choice itself."""
    batch, num_actions = q.shape
    # One draw of 2B uniforms: rng.integers costs several times as much as rng.random for a few rows.
    # floor(u * A) is uniform over the A actions to within 2**-53 (u is a multiple of 2**-53 below 1).
    draws = rng.random(2 * batch)
    explore = draws[:batch] < epsilon
    random_actions = (draws[batch:] * num_actions).astype(np.int64)
    greedy = q.argmax(axis=1).astype(np.int64, copy=False)  # the method: np.argmax's dispatch costs more here
    return np.where(explore, random_actions, greedy)
