"""An actor held back by replay keeps reporting: waiting is not silence.

When replay stops reading (here: SIGSTOP), an actor's PUSH socket fills and the actor waits, stepping no
env. The learner must still hear from it, or it would take a healthy actor for dead and a long pause for
a lost cluster.
"""

from __future__ import annotations

import os
import signal
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

HELD_S = 9.0  # well past the 5 s after which the learner calls an actor silent


def _steps(cluster: Cluster) -> int:
    rows = [r for r in cluster.metrics() if "env_steps_per_s" in r]
    return rows[-1]["env_steps"] if rows else 0


def test_an_actor_waiting_on_replay_still_reports_to_the_learner(cluster: Cluster) -> None:
    overrides = ("stop.eval_return=1000000", "stop.max_wall_s=120")
    replay = cluster.start_replay(*overrides)
    cluster.start_learner(*overrides, "log_interval_s=1")
    cluster.start_actor(0)
    assert cluster.wait_until(lambda: _steps(cluster) > 0, timeout_s=60), f"no steps\n{cluster.diagnostics()}"
    learner_log = cluster.log_path("learner")
    os.kill(replay.pid, signal.SIGSTOP)
    try:
        time.sleep(2.0)  # the actor's queue fills and it starts waiting
        steps_held = _steps(cluster)
        silent_before = learner_log.read_text().count("actor 0 silent for")
        time.sleep(HELD_S)
        held_log = learner_log.read_text()
        steps_after = _steps(cluster)
    finally:
        os.kill(replay.pid, signal.SIGCONT)
    assert steps_after - steps_held < 5_000, f"the actor was not held back ({steps_held} -> {steps_after} steps)"
    assert held_log.count("actor 0 silent for") == silent_before, (
        f"the learner took the waiting actor for silent\n{cluster.diagnostics()}"
    )
    assert cluster.wait_until(lambda: _steps(cluster) > steps_after + 1_000, timeout_s=30), (
        f"the actor did not go on once replay did\n{cluster.diagnostics()}"
    )
