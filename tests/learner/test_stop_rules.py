"""The stop rules: solved only by enough evaluations in a row at the threshold; budgets end a run."""

from __future__ import annotations

import dataclasses

from common.config import StopConfig
from learner.stop_rules import StopRules


def _rules(**changes) -> StopRules:
    return StopRules(dataclasses.replace(StopConfig(), **changes))


def test_a_run_is_solved_only_by_consecutive_evaluations_at_the_threshold() -> None:
    rules = _rules(eval_return=100.0, eval_consecutive=2)
    assert rules.best is None
    assert not rules.evaluated(100.0)
    assert not rules.evaluated(99.9), "a miss must restart the count"
    assert not rules.evaluated(150.0)
    assert rules.evaluated(100.0)
    assert rules.best == 150.0


def test_each_budget_ends_a_run_with_its_reason() -> None:
    rules = _rules(max_env_steps=1000, max_updates=50, max_wall_s=10.0)
    assert rules.budget_spent(999, 49, 9.9) is None
    assert rules.budget_spent(1000, 0, 0.0) == "env-step budget 1000 reached"
    assert rules.budget_spent(0, 50, 0.0) == "update budget 50 reached"
    assert rules.budget_spent(0, 0, 10.0) == "time budget 10s reached"
