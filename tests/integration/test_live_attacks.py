"""A live cluster under peers that abuse every socket they can reach, one attack class after another.

Forged evaluations and counters, hellos naming live actors, floods, oversized reports and get_weights
floods on the control plane; poisoned transitions, overflowing counters, churned streams, unservable and
never-read sample requests and bad priorities on replay. Afterwards training must be going again within
a few seconds, both servers' memory and logs must stay bounded, every parameter must be
finite and the run's outcome unforged.
"""

from __future__ import annotations

import json
import re
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch
import zmq

from tests.integration.attackers import Attacker, attack_control_plane, attack_replay

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

RUN_S = 60
RSS_GROWTH_MB = 150  # per server, above its footprint before the attack
LOG_BYTES = 2 << 20
BACK_WITHIN_S = 5.0  # training again this soon after the last attack message left
LOG_INTERVAL_S = 1.0  # the learner's metrics rows: a resumed update shows up one row later at most


def _rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024


def _updates(cluster: Cluster) -> int:
    rows = [r for r in cluster.metrics() if "updates_per_s" in r]
    return rows[-1]["learner_updates"] if rows else 0


def _watch_rss(pids: dict[str, int], seconds: float) -> dict[str, float]:
    most = {name: _rss_mb(pid) for name, pid in pids.items()}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for name, pid in pids.items():
            most[name] = max(most[name], _rss_mb(pid))
        time.sleep(0.2)
    return most


def _non_finite(state: object, name: str = "checkpoint") -> list[str]:
    if isinstance(state, torch.Tensor):
        return [name] if state.is_floating_point() and not bool(torch.isfinite(state).all()) else []
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, (list, tuple)) else ()
    return [bad for key, item in items for bad in _non_finite(item, f"{name}.{key}")]


def test_peers_abusing_every_socket_cannot_stall_bloat_poison_or_forge_the_run(cluster: Cluster) -> None:
    overrides = ("stop.eval_return=475", "stop.max_env_steps=5000000", f"stop.max_wall_s={RUN_S}")
    replay = cluster.start_replay(*overrides)
    learner = cluster.start_learner(*overrides, f"log_interval_s={LOG_INTERVAL_S:g}")
    for index in (0, 1):
        cluster.start_actor(index)
    assert cluster.wait_until(lambda: _updates(cluster) > 0, timeout_s=60), f"no training\n{cluster.diagnostics()}"
    servers = {"replay": replay.pid, "learner": learner.pid}
    rss_before = {name: _rss_mb(pid) for name, pid in servers.items()}
    ctx = zmq.Context()
    attacker = Attacker(ctx, "127.0.0.1", cluster.port_base)
    try:
        attack_control_plane(attacker)
        attack_replay(attacker)
        attacked_at, updates_then = time.monotonic(), _updates(cluster)
        resumed = cluster.wait_until(
            lambda: _updates(cluster) > updates_then, timeout_s=BACK_WITHIN_S + LOG_INTERVAL_S, interval_s=0.05
        )
        back_after_s = time.monotonic() - attacked_at
        assert resumed, f"no update within {BACK_WITHIN_S:g} s of the attack\n{cluster.diagnostics()}"
        most_rss = _watch_rss(servers, 10)
        for name in servers:
            growth = most_rss[name] - rss_before[name]
            assert growth < RSS_GROWTH_MB, f"{name} RSS {rss_before[name]:.0f} -> {most_rss[name]:.0f} MB"
        assert replay.poll() is None, f"replay died under attack\n{cluster.diagnostics()}"
        assert cluster.wait_until(lambda: _updates(cluster) > updates_then + 100, timeout_s=30), (
            f"training stalled after the attack\n{cluster.diagnostics()}"
        )
        code = cluster.wait_exit("learner", timeout_s=RUN_S + 60)
        replay.send_signal(signal.SIGTERM)  # and replay, attacked too, still stops cleanly
        replay_code = replay.wait(timeout=30)
    finally:
        attacker.close()
        ctx.destroy(linger=0)
    print(f"training again {back_after_s:.2f} s after the attack; RSS {rss_before} -> at most {most_rss} MB")
    assert code == 1, f"learner exit status {code} (1: not solved)\n{cluster.diagnostics()}"
    assert replay_code == 0, f"replay exit status {replay_code} after SIGTERM\n{cluster.diagnostics()}"
    summary = json.loads((cluster.run_dir / "summary.json").read_text())
    assert summary["solved"] is False and summary["best_eval_return"] is None, summary
    assert summary["reason"].startswith("time budget"), summary
    assert summary["env_steps"] < 3_000_000, summary
    checkpoint = torch.load(cluster.run_dir / "checkpoints" / "latest.pt", weights_only=True)
    assert not _non_finite(checkpoint), f"non-finite tensors in the final checkpoint: {_non_finite(checkpoint)[:5]}"
    log = cluster.log("learner")
    assert len(log) < LOG_BYTES, f"{len(log)} bytes of learner log"
    replay_log = cluster.log("replay")
    assert len(replay_log) < LOG_BYTES, f"{len(replay_log)} bytes of replay log"
    assert not any(line.startswith("SOLVED") for line in replay_log.splitlines())
    assert not any(line.startswith("SOLVED") for line in log.splitlines() + cluster.stdout("learner").splitlines())
    assert "Traceback" not in log and "Traceback" not in replay_log
