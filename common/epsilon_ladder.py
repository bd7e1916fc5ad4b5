"""The Ape-X exploration ladder: each actor's (or each environment slot's) fixed epsilon, from its index.

Both roles need it: the learner chooses each joining actor's epsilons (and sends the per-actor one in
`welcome`), and an actor of a learner that sends none computes them here (docs/protocol.md, "Acting").
"""

from __future__ import annotations


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


EPSILON_OVER = ("actors", "slots")


def slot_epsilons(
    index: int, num_envs: int, population: int, base: float = 0.4, alpha: float = 7.0, over: str = "actors"
) -> list[float]:
    """Return the epsilon of each of actor ``index``'s ``num_envs`` environment slots.

    ``over="actors"``: every slot gets the actor's ``apex_epsilon(index, population)``. ``over="slots"``:
    slot ``j`` is global slot ``g = (index mod N) * E + j`` of a population of ``N * E`` slots and gets
    ``apex_epsilon(g, N * E)``, the Ape-X formula exactly, over every environment the population steps.
    Why slots: with few actors the per-actor ladder has few rungs (two actors: 0.4 and 0.4 ** 8), so
    half the experience is all but greedy; spread over slots the same formula has N * E rungs between
    the same ends. Joiners beyond N repeat the slots of ``index mod N``, as with actors.
    """
    if over not in EPSILON_OVER:
        raise ValueError(f"over must be one of {EPSILON_OVER}, got {over!r}")
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    if over == "actors":
        return [apex_epsilon(index, population, base, alpha)] * num_envs
    if population < 1 or index < 0:  # apex_epsilon's own messages
        apex_epsilon(index, population, base, alpha)
    first = (index % population) * num_envs
    return [apex_epsilon(first + j, population * num_envs, base, alpha) for j in range(num_envs)]
