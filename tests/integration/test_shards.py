"""Sharded replay end to end: real launchers, two replay shards, actors, a relay, on loopback with run keys.

- CartPole-v1 is solved with two shards and the weight relay, each actor's data in its own shard and
  both shards sampled.
- A hung shard is left out of sampling within seconds and the learner keeps updating from the other; the
  shard, killed and restarted by the launcher from its snapshot, is sampled again.
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from common.run_keys import ENV

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster

REPO = Path(__file__).resolve().parents[2]
LAUNCH_ACTORS = REPO / "scripts" / "launch_actors.sh"


@pytest.fixture
def port_base() -> int:
    from tests.integration.conftest import free_port_base

    return free_port_base(count=24)  # shard 1 listens 10 ports above shard 0


def _sampled(log: str) -> list[int]:
    """Every 'sampled N' a replay server's progress lines gave, in order."""
    return [int(n) for n in re.findall(r" sampled (\d+) \(", log)]


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _launcher_args(cluster: Cluster, *more: str) -> list[str]:
    return ["--run-dir", str(cluster.run_dir), "--port-base", str(cluster.port_base), *more]


def test_cartpole_is_solved_with_two_shards_and_a_relay(cluster: Cluster) -> None:
    cluster.start_launcher(
        *_launcher_args(cluster, "--seed", "1", "--servers-only", "--num-actors", "2"),
        *("replay.shards=2", "stop.max_wall_s=240", "log_interval_s=2"),
    )
    hint = cluster.wait_until(
        lambda: re.search(r"actors on this host: DISTDQN_RUN_KEYS=(\S+) ", cluster.stdout("launcher")), timeout_s=60
    )
    assert hint, f"the launcher did not start the servers\n{cluster.diagnostics()}"
    assert "started 2 replay shards, learner, evaluator" in cluster.stdout("launcher")
    cluster.env[ENV] = hint.group(1)
    actors = cluster.tmp_path / "actors"
    cluster.start(
        "actors",
        [str(LAUNCH_ACTORS), "--learner", cluster.learner_address, "--num-actors", "2", "--relay"]
        + ["--log-dir", str(actors)],
    )
    status = cluster.wait_exit("launcher", timeout_s=300)
    assert status == 0, f"not solved (status {status})\n{cluster.diagnostics()}"
    logs = cluster.run_dir / "logs"
    inserted = sampled = 0
    for shard, name in enumerate(("replay", "replay-1")):
        text = (logs / f"{name}.log").read_text()
        i, s = re.findall(r" inserted (\d+) \([^)]*\) sampled (\d+) ", text)[-1]
        inserted, sampled = inserted + int(i), sampled + int(s)
        stored = re.search(r"closed: stored (\d+) transitions \((.*)\)", text)
        assert stored, text[-2000:]
        assert stored.group(2) == f"actor {shard}: {stored.group(1)}"  # actor i pushes to shard i mod 2
        assert max(_sampled(text), default=0) > 0, f"{name} was never sampled\n{text[-2000:]}"
    # The preset's samples_per_insert (8) holds for the whole: each shard keeps it within its tolerance
    # (2 * (64 * 8 + 128) / 2 sampled transitions, replay.rate_limiter), so the sums do within two.
    assert sampled <= 8 * inserted + 2 * 640, (inserted, sampled)
    assert sampled > 0.5 * 8 * inserted, (inserted, sampled)  # and the learner really sampled both at pace
    assert "weight versions taken" in (actors / "logs" / "actor-0.log").read_text()
    assert re.search(r"relay \d+", (actors / "logs" / "actor-1.log").read_text()), cluster.diagnostics()


def test_a_hung_shard_is_left_out_and_a_restarted_one_sampled_again(cluster: Cluster) -> None:
    cluster.start_launcher(
        *_launcher_args(cluster, "--seed", "0", "--num-actors", "2", "--no-eval"),
        *("replay.shards=2", "replay.snapshot_interval_s=2", "stop.eval_return=1000000"),
        *("stop.max_wall_s=150", "log_interval_s=1"),
    )
    learner_log = cluster.run_dir / "logs" / "learner.log"
    shard_log = cluster.run_dir / "logs" / "replay-1.log"

    def updates() -> int:
        rows = [r for r in cluster.metrics() if "learner_updates" in r]
        return rows[-1]["learner_updates"] if rows else 0

    assert cluster.wait_until(lambda: updates() > 200 and "snapshot (timer)" in shard_log.read_text(), 90), (
        cluster.diagnostics()
    )
    shard = [p for p in cluster.remember_descendants() if "--shard 1" in cluster.command_line(p)]
    assert len(shard) == 1, shard
    os.kill(shard[0], signal.SIGSTOP)
    try:
        said = cluster.wait_until(lambda: "replay shard 1/2 left out of sampling" in learner_log.read_text(), 30)
        assert said, cluster.diagnostics()
        before = updates()
        assert cluster.wait_until(lambda: updates() > before + 100, 30), (
            f"the learner stalled on the hung shard\n{cluster.diagnostics()}"
        )
    finally:
        os.kill(shard[0], signal.SIGKILL)  # the launcher restarts it with --restore
    launcher_log = cluster.run_dir / "logs" / "launcher.log"
    assert cluster.wait_until(lambda: "restarting replay-1" in _read(launcher_log), 30), cluster.diagnostics()
    assert cluster.wait_until(lambda: "replay shard 1/2 answers again" in learner_log.read_text(), 60), (
        cluster.diagnostics()
    )
    text = shard_log.read_text()
    assert re.search(r"restored [1-9]\d* transitions from .*replay-1/snapshot", text), text[-3000:]
    restarted_at = text.rindex("serving: ingest")
    assert cluster.wait_until(
        lambda: any(n > 0 for n in _sampled(shard_log.read_text()[restarted_at:])) and updates() > 0, 60
    ), f"the restarted shard was not sampled again\n{cluster.diagnostics()}"
    # Sampled again by the learner, not only counted from its snapshot: the count grows after restart.
    grown = cluster.wait_until(lambda: len(set(_sampled(shard_log.read_text()[restarted_at:]))) >= 3, 60)
    assert grown, cluster.diagnostics()
