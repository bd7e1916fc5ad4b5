"""When a run ends: evaluations at the threshold enough times in a row, or a budget spent.

Kept apart from the update loop so that the rules can be read (and tested) in one place; the loop only
asks after each evaluation and once per iteration.
"""

from __future__ import annotations

import math

from common.config import StopConfig


class StopRules:
    def __init__(self, stop: StopConfig) -> None:
        self.stop = stop
        self.in_a_row = 0  # consecutive evaluations at or above the threshold
        self.best_eval = -math.inf

    def evaluated(self, mean_return: float) -> bool:
        """Count one evaluation; True when the run is solved by it."""
        self.best_eval = max(self.best_eval, mean_return)
        self.in_a_row = self.in_a_row + 1 if mean_return >= self.stop.eval_return else 0
        return self.in_a_row >= self.stop.eval_consecutive

    def budget_spent(self, env_steps: int, updates: int, elapsed_s: float) -> str | None:
        """The reason the run must end now for lack of budget, or None."""
        sc = self.stop
        if env_steps >= sc.max_env_steps:
            return f"env-step budget {sc.max_env_steps} reached"
        if updates >= sc.max_updates:
            return f"update budget {sc.max_updates} reached"
        if elapsed_s >= sc.max_wall_s:
            return f"time budget {sc.max_wall_s:g}s reached"
        return None

    @property
    def best(self) -> float | None:
        return self.best_eval if math.isfinite(self.best_eval) else None
