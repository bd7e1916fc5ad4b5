"""Faults a running cluster must survive: an actor killed outright is restarted and training goes on."""

from __future__ import annotations

import os
import re
import signal
import time
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster


def _actor_pid(cluster: Cluster, index: int) -> int | None:
    for pid in cluster.remember_descendants():
        cmd = cluster.command_line(pid)
        if "-m actor" in cmd and f"--actor-index {index} " in f"{cmd} ":
            return pid
    return None


def _updates(cluster: Cluster) -> int:
    rows = [r for r in cluster.metrics() if "learner_updates" in r and "eval_return_mean" not in r]
    return rows[-1]["learner_updates"] if rows else 0


def _start_training(cluster: Cluster) -> None:
    """A cluster without evaluator that trains until the test is done with it (it never solves)."""
    cluster.start_launcher(
        "--run-dir",
        str(cluster.run_dir),
        "--port-base",
        str(cluster.port_base),
        "--no-eval",
        "stop.eval_return=1000000",
        "stop.max_wall_s=150",
        "log_interval_s=1",
    )


@pytest.mark.slow
def test_killed_actor_is_restarted_with_current_weights_and_training_continues(cluster: Cluster) -> None:
    _start_training(cluster)
    first = cluster.wait_until(lambda: _actor_pid(cluster, 0) if _updates(cluster) > 0 else None, timeout_s=90)
    assert first, f"the cluster did not start training\n{cluster.diagnostics()}"
    log = cluster.run_dir / "logs" / "actor-0.log"
    joined = re.compile(r"joined run \S+ with weights v(\d+)")
    assert cluster.wait_until(lambda: joined.search(log.read_text()), timeout_s=30)

    os.kill(first, signal.SIGKILL)
    updates_at_kill = _updates(cluster)

    def restarted() -> list[int] | None:
        versions = [int(v) for v in joined.findall(log.read_text())]
        return versions if len(versions) >= 2 else None

    versions = cluster.wait_until(restarted, timeout_s=60)
    assert versions, f"actor-0 was not restarted\n{cluster.diagnostics()}"
    second = _actor_pid(cluster, 0)
    assert second and second != first
    # The restarted actor joined with weights newer than those the first one started with: current ones.
    assert versions[-1] > versions[0], versions
    assert "actor-0 died (status 137)" in cluster.log("launcher")
    # Training never stopped: the learner kept updating, fed by both actors.
    assert cluster.wait_until(lambda: _updates(cluster) > updates_at_kill + 50, timeout_s=60), (
        f"the learner stalled after the actor was killed\n{cluster.diagnostics()}"
    )
    # ... and it held those weights before its first step.
    text = log.read_text()
    assert text.rindex("joined run") < text.rindex("acting with epsilon")


@pytest.mark.slow
def test_hung_actor_is_reported_and_does_not_stall_training(cluster: Cluster) -> None:
    _start_training(cluster)
    hung = cluster.wait_until(lambda: _actor_pid(cluster, 1) if _updates(cluster) > 0 else None, timeout_s=90)
    assert hung, f"the cluster did not start training\n{cluster.diagnostics()}"
    learner_log = cluster.run_dir / "logs" / "learner.log"
    os.kill(hung, signal.SIGSTOP)
    try:
        updates_at_stop = _updates(cluster)
        reported = cluster.wait_until(lambda: "actor 1 silent for" in learner_log.read_text(), timeout_s=15)
        assert reported, f"the learner did not notice the hung actor\n{cluster.diagnostics()}"
        assert cluster.wait_until(lambda: _updates(cluster) > updates_at_stop + 50, timeout_s=60), (
            f"training stalled behind the hung actor\n{cluster.diagnostics()}"
        )
    finally:
        os.kill(hung, signal.SIGCONT)
    back = cluster.wait_until(lambda: "actor 1 is reporting again" in learner_log.read_text(), timeout_s=20)
    assert back, f"the resumed actor was not noticed\n{cluster.diagnostics()}"


@pytest.mark.slow
def test_learner_killed_and_resumed_continues_with_the_same_actors_and_replay(cluster: Cluster) -> None:
    overrides = ("learner.checkpoint_interval_s=2", "stop.eval_return=1000000", "stop.max_wall_s=150")
    cluster.start_replay(*overrides)
    first = cluster.start_learner(*overrides, "log_interval_s=1")
    actors = [cluster.start_actor(i) for i in (0, 1)]
    written = re.compile(r"checkpoint written: \S+ \(update (\d+)\)")
    log = cluster.log_path("learner")
    checkpointed = cluster.wait_until(
        lambda: [int(u) for u in written.findall(log.read_text()) if int(u) > 0], timeout_s=90
    )
    assert checkpointed, f"no checkpoint with updates was written\n{cluster.diagnostics()}"
    first.kill()
    first.wait(10)
    last_checkpoint = [int(u) for u in written.findall(log.read_text())][-1]

    cluster.start("learner-resumed", [*first.args, "--resume"])
    resumed_log = cluster.log_path("learner-resumed")
    resumed = re.compile(r"resumed at update (\d+)")
    match = cluster.wait_until(lambda: resumed.search(resumed_log.read_text()), timeout_s=60)
    assert match, f"the learner did not resume\n{cluster.diagnostics()}"
    assert int(match.group(1)) == last_checkpoint

    def trained_on() -> bool:
        rows = [r for r in cluster.metrics() if "updates_per_s" in r]
        return bool(rows) and rows[-1]["learner_updates"] > last_checkpoint + 100 and rows[-1]["actors_alive"] == 2

    assert cluster.wait_until(trained_on, timeout_s=60), f"training did not continue\n{cluster.diagnostics()}"
    # The same actor processes kept going and switched to the resumed learner's weights.
    assert all(proc.poll() is None for proc in actors)
    for i in (0, 1):
        text = cluster.log(f"actor-{i}")
        assert "the learner restarted" in text, f"actor {i} did not follow the new learner\n{text[-2000:]}"


@pytest.mark.slow
def test_sigterm_with_a_hung_replay_server_still_stops_everything_in_time(cluster: Cluster) -> None:
    """A peer that never answers must not hold the shutdown: every process ends within 10 s."""
    _start_training(cluster)
    launcher = cluster.procs["launcher"]
    assert cluster.wait_until(lambda: _updates(cluster) > 0, timeout_s=90), cluster.diagnostics()
    replay = next(pid for pid in cluster.remember_descendants() if "-m replay" in cluster.command_line(pid))
    recorded = cluster.remember_descendants()
    os.kill(replay, signal.SIGSTOP)
    time.sleep(1.0)
    signalled_at = time.time()
    launcher.send_signal(signal.SIGTERM)
    gone = cluster.wait_until(
        lambda: launcher.poll() is not None and not any(cluster.is_alive(pid) for pid in recorded),
        timeout_s=10,
        interval_s=0.1,
    )
    assert gone, f"still running {time.time() - signalled_at:.1f} s after SIGTERM\n{cluster.diagnostics()}"
    # The learner was not the one that hung: it wrote its final checkpoint on the way out.
    checkpoint = cluster.run_dir / "checkpoints" / "latest.pt"
    assert checkpoint.is_file() and checkpoint.stat().st_mtime >= signalled_at, cluster.diagnostics()
