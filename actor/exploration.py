"""Exploration for Ape-X actors.

Ape-X gives every actor its own fixed epsilon instead of annealing one
schedule: a spread of exploration rates across the population produces
diverse experience for the shared replay buffer without any coordination.
"""

from __future__ import annotations

import numpy as np


def apex_epsilon(index: int, population: int, base: float = 0.4, alpha: float = 7.0) -> float:
    """Return the fixed epsilon of actor ``index`` out of ``population`` actors.

    Uses the Ape-X schedule ``base ** (1 + alpha * i / (N - 1))``, so actor 0
    explores the most (``base``) and actor N-1 the least (``base ** (1 + alpha)``).

    ``i`` is ``index mod N``: actors launched on other hosts may carry a
    global index larger than the local population, and wrapping keeps them on
    the same geometric ladder instead of failing or extrapolating to an
    epsilon that is effectively zero. With a single actor there is no ladder,
    so it simply gets ``base``. The learner hands out the free indices in
    [0, N) first, and sends the result of this function in its welcome
    (``learner.actors``), so that actors written elsewhere need not compute it.

    Raises:
        ValueError: if ``population < 1``, ``index < 0``, ``base`` is outside
            (0, 1], or ``alpha < 0`` (which would push epsilon above ``base``
            and possibly above 1).
    """
    if population < 1:
        raise ValueError(f"population must be >= 1, got {population}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    if not 0.0 < base <= 1.0:
        raise ValueError(f"base must be in (0, 1], got {base}")
    if not alpha >= 0.0:  # also rejects NaN
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if population == 1:
        return float(base)
    i = index % population
    return float(base ** (1.0 + alpha * i / (population - 1)))


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
    batch, num_actions = q.shape
    if isinstance(epsilon, (float, int)):  # the actors' case, checked without numpy (it runs every step)
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError("epsilon values must lie in [0, 1]")
        eps = epsilon
    else:
        eps = np.asarray(epsilon, dtype=np.float64)
        if eps.ndim not in (0, 1) or (eps.ndim == 1 and eps.shape[0] != batch):
            raise ValueError(f"epsilon must be a scalar or shape ({batch},), got {eps.shape}")
        if np.any(~((eps >= 0.0) & (eps <= 1.0))):
            raise ValueError("epsilon values must lie in [0, 1]")
    # One draw of 2B uniforms: rng.integers costs several times as much as rng.random for a few rows.
    # floor(u * A) is uniform over the A actions to within 2**-53 (u is a multiple of 2**-53 below 1).
    draws = rng.random(2 * batch)
    explore = draws[:batch] < eps
    random_actions = (draws[batch:] * num_actions).astype(np.int64)
    greedy = q.argmax(axis=1).astype(np.int64, copy=False)  # the method: np.argmax's dispatch costs more here
    return np.where(explore, random_actions, greedy)
