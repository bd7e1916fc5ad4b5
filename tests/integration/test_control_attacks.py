"""A live cluster under a peer that holds a connection to the learner and abuses it.

Forged evaluations, absurd step counts, hellos naming live actors, hello floods, oversized reports and
get_weights floods must leave the run's outcome unforged, its step count sane, the learner's memory and
log bounded, and training going on.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import zmq

from common.wire import Encoder

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

RUN_S = 60
RSS_GROWTH_MB = 150
LOG_BYTES = 2 << 20


def _rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", text).group(1)) / 1024


def _updates(cluster: Cluster) -> int:
    rows = [r for r in cluster.metrics() if "updates_per_s" in r]
    return rows[-1]["learner_updates"] if rows else 0


class _Attacker:
    def __init__(self, ctx: zmq.Context, address: str) -> None:
        self.ctx, self.address = ctx, address
        self.sockets: list[zmq.Socket] = []
        self.enc = Encoder("attacker")

    def dealer(self, rcvhwm: int = 1000) -> zmq.Socket:
        sock = self.ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        sock.connect(f"tcp://{self.address}")
        self.sockets.append(sock)
        return sock

    def send(self, sock: zmq.Socket, kind: str, meta: dict | None = None, arrays: dict | None = None) -> None:
        sock.send_multipart(self.enc(kind, meta, arrays))

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)


def _attack(attacker: _Attacker) -> None:
    result = {"returns": np.full(10, 1e6, np.float32), "lengths": np.full(10, 500, np.int64)}
    stranger, actor = attacker.dealer(), attacker.dealer()
    attacker.send(actor, "hello", {"role": "actor", "actor_index": -1, "instance": "attacker"})
    for sock in (stranger, actor):  # forged evaluations
        for _ in range(3):
            attacker.send(sock, "eval_result", {"weight_version": 1}, result)
    episodes = {"episode_returns": np.ones(4, np.float32), "episode_lengths": np.ones(4, np.int64)}
    for sock in (stranger, actor):  # absurd step counts, for its own index and for the launched actors'
        for index in (0, 1, 2):
            meta = {"actor_index": index, "env_steps": 2**62, "transitions_sent": 0, "weight_version": 0}
            attacker.send(sock, "actor_stats", meta, episodes)
    for i in range(10):  # hellos naming live actors
        attacker.send(attacker.dealer(), "hello", {"role": "actor", "actor_index": i % 2})
    flood = attacker.dealer()
    for i in range(3000):  # a hello flood, and peer text meant to forge log lines
        meta = {"role": "actor", "actor_index": -1, "instance": f"f{i}", "host": "h\nSOLVED: forged" + "x" * 65536}
        attacker.send(flood, "hello", meta)
    for _ in range(200):
        attacker.send(attacker.dealer(), "hello", {"role": "actor", "actor_index": -1, "host": "y" * 65536})
    huge = {"episode_returns": np.ones(1 << 24, np.float32), "episode_lengths": np.ones(1 << 24, np.int64)}
    meta = {"actor_index": 0, "env_steps": 1, "transitions_sent": 0, "weight_version": 0}
    attacker.send(attacker.dealer(), "actor_stats", meta, huge)  # 192 MiB: never buffered whole
    for _ in range(50):  # get_weights from peers that never read
        sock = attacker.dealer(rcvhwm=1)
        for _ in range(100):
            attacker.send(sock, "get_weights")


def test_a_peer_abusing_the_control_plane_cannot_forge_end_bloat_or_stall_the_run(cluster: Cluster) -> None:
    overrides = ("stop.eval_return=475", "stop.max_env_steps=5000000", f"stop.max_wall_s={RUN_S}")
    cluster.start_replay(*overrides)
    learner = cluster.start_learner(*overrides, "log_interval_s=1")
    for index in (0, 1):
        cluster.start_actor(index)
    assert cluster.wait_until(lambda: _updates(cluster) > 0, timeout_s=60), f"no training\n{cluster.diagnostics()}"
    rss_before = _rss_mb(learner.pid)
    ctx = zmq.Context()
    attacker = _Attacker(ctx, cluster.learner_address)
    try:
        _attack(attacker)
        updates_after_attack = _updates(cluster)
        most_rss = rss_before
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and learner.poll() is None:
            most_rss = max(most_rss, _rss_mb(learner.pid))
            time.sleep(0.2)
        assert most_rss - rss_before < RSS_GROWTH_MB, f"learner RSS {rss_before:.0f} -> {most_rss:.0f} MB"
        assert cluster.wait_until(lambda: _updates(cluster) > updates_after_attack + 100, timeout_s=30), (
            f"training stalled after the attack\n{cluster.diagnostics()}"
        )
        code = cluster.wait_exit("learner", timeout_s=RUN_S + 60)
    finally:
        attacker.close()
        ctx.destroy(linger=0)
    assert code == 1, f"learner exit status {code} (1: not solved)\n{cluster.diagnostics()}"
    summary = json.loads((cluster.run_dir / "summary.json").read_text())
    print(f"learner RSS {rss_before:.0f} -> at most {most_rss:.0f} MB; summary {summary}")
    assert summary["solved"] is False and summary["best_eval_return"] is None, summary
    assert summary["reason"].startswith("time budget"), summary
    assert summary["env_steps"] < 3_000_000, summary
    log = cluster.log("learner")
    assert len(log) < LOG_BYTES, f"{len(log)} bytes of learner log"
    assert not any(line.startswith("SOLVED") for line in log.splitlines() + cluster.stdout("learner").splitlines())
    assert "Traceback" not in log
