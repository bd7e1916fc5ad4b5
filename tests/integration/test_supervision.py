"""The launcher supervises the servers too: replay killed outright comes back from its snapshot, the learner
from its checkpoint, and training goes on. (Its servers-only mode, for actors from elsewhere, is tested in
test_shards.py, with two replay shards and a relay.)"""

from __future__ import annotations

import os
import re
import signal
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow


def _role_pid(cluster: Cluster, module: str, other_than: int | None = None) -> int | None:
    for pid in cluster.remember_descendants():
        if f"-m {module} " in f"{cluster.command_line(pid)} " and pid != other_than:
            return pid
    return None


def _updates(cluster: Cluster) -> int:
    rows = [r for r in cluster.metrics() if "learner_updates" in r and "eval_return_mean" not in r]
    return rows[-1]["learner_updates"] if rows else 0


def _kill_and_wait_back(cluster: Cluster, module: str, log_line: str) -> int:
    """SIGKILL the role's process; wait for the launcher's restart and `log_line` in its log; the new pid."""
    old = _role_pid(cluster, module)
    assert old is not None, f"no {module} process\n{cluster.diagnostics()}"
    os.kill(old, signal.SIGKILL)
    new = cluster.wait_until(lambda: _role_pid(cluster, module, other_than=old), timeout_s=30)
    assert new, f"the launcher did not restart {module}\n{cluster.diagnostics()}"
    log = cluster.run_dir / "logs" / f"{module}.log"
    assert cluster.wait_until(lambda: log_line in log.read_text(errors="replace"), timeout_s=40), (
        f"{module} came back without '{log_line}'\n{cluster.diagnostics()}"
    )
    return new


def test_killed_replay_and_learner_are_restarted_and_training_goes_on(cluster: Cluster) -> None:
    cluster.start_launcher(
        *("--run-dir", str(cluster.run_dir), "--port-base", str(cluster.port_base), "--no-eval"),
        "stop.eval_return=1000000",
        "stop.max_wall_s=150",
        "log_interval_s=1",
        "replay.snapshot_interval_s=2",
        "learner.checkpoint_interval_s=2",
    )
    snapshot = cluster.run_dir / "replay" / "snapshot.npz"
    checkpoint = cluster.run_dir / "checkpoints" / "latest.pt"
    ready = cluster.wait_until(lambda: _updates(cluster) > 0 and snapshot.exists() and checkpoint.exists(), 90)
    assert ready, f"the cluster did not start training\n{cluster.diagnostics()}"

    _kill_and_wait_back(cluster, "replay", "restored")
    after_replay = _updates(cluster)
    assert cluster.wait_until(lambda: _updates(cluster) > after_replay + 200, timeout_s=40), (
        f"updates did not resume after replay's restart ({after_replay})\n{cluster.diagnostics()}"
    )

    _kill_and_wait_back(cluster, "learner", "resumed at update")
    learner_log = (cluster.run_dir / "logs" / "learner.log").read_text(errors="replace")
    resumed = int(re.findall(r"resumed at update (\d+)", learner_log)[-1])
    assert resumed > 0
    assert cluster.wait_until(lambda: _updates(cluster) > resumed + 200, timeout_s=40), (
        f"updates did not resume after the learner's restart (from {resumed})\n{cluster.diagnostics()}"
    )

    said = (cluster.run_dir / "logs" / "launcher.log").read_text()
    for role in ("replay", "learner"):
        assert f"{role} died (status 137); restarting in 1 s" in said, said
        assert f"restarting {role} (restart 1 of 5)" in said, said
    assert "replay died (status 137)" in cluster.log("launcher")  # the launcher's own output says so too
    assert cluster.procs["launcher"].poll() is None
