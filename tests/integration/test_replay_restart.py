"""A replay server killed outright comes back from its snapshot, and its clients never notice but a pause.

Real processes and real sockets: the test plays the actors (a PUSH socket sending `transitions`) and the
learner (a DEALER sending `stats_request`, `sample`, `snapshot_request`), and keeps using the same two
sockets across both restarts, because that is what real actors and learners do: ZeroMQ reconnects them.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from common.wire import Encoder, Message, decode

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster

OVERRIDES = ("replay.min_size=128", "replay.capacity=1000", "replay.samples_per_insert=0", "replay.alpha=0.6")
BATCH = 64  # rows per transitions message (the cartpole preset's actor.send_size)
ALPHA, EPS = 0.6, 1e-6  # replay.alpha above and ReplayBuffer's default priority_eps


def _transitions(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "obs": (0.05 * rng.standard_normal((BATCH, 4))).astype(np.float32),
        "action": rng.integers(0, 2, BATCH).astype(np.int64),
        "reward": rng.standard_normal(BATCH).astype(np.float32),
        "discount": np.full(BATCH, 0.99**3, dtype=np.float32),
        "next_obs": (0.05 * rng.standard_normal((BATCH, 4))).astype(np.float32),
        "priority": rng.uniform(0.1, 2.0, BATCH).astype(np.float32),
        "version": np.zeros(BATCH, dtype=np.int64),
    }


class _Client:
    """The test's actor and learner sockets, created once and reused across server restarts."""

    def __init__(self, ctx: zmq.Context, port_base: int) -> None:
        self.push = ctx.socket(zmq.PUSH)
        self.dealer = ctx.socket(zmq.DEALER)
        for sock in (self.push, self.dealer):
            sock.setsockopt(zmq.LINGER, 0)
        self.monitors = [s.get_monitor_socket(zmq.EVENT_DISCONNECTED) for s in (self.push, self.dealer)]
        self.push.connect(f"tcp://127.0.0.1:{port_base + 2}")
        self.dealer.connect(f"tcp://127.0.0.1:{port_base + 3}")
        self.actor, self.learner = Encoder("test-actor"), Encoder("test-learner")

    def send(self, seed: int) -> dict[str, np.ndarray]:
        batch = _transitions(seed)
        self.push.send_multipart(self.actor("transitions", {"actor_index": seed % 2}, batch))
        return batch

    def request(self, kind: str, meta: dict | None = None, timeout_s: float = 15.0) -> Message:
        self.dealer.send_multipart(self.learner(kind, meta))
        assert self.dealer.poll(int(timeout_s * 1000)), f"no reply to {kind} within {timeout_s} s"
        return decode(self.dealer.recv_multipart())

    def stats_when(self, inserted: int, timeout_s: float = 10.0) -> dict:
        """Poll `replay_stats` until `inserted` is reached (never past it: nothing else sends)."""
        deadline = time.monotonic() + timeout_s
        while True:
            stats = self.request("stats_request", timeout_s=timeout_s).meta
            assert stats["inserted"] <= inserted, stats
            if stats["inserted"] == inserted:
                return stats
            assert time.monotonic() < deadline, f"inserted stuck at {stats['inserted']}, expected {inserted}"
            time.sleep(0.05)

    def wait_disconnected(self) -> None:
        """Both sockets noticed the dead server: what they send now waits in their queues."""
        for monitor in self.monitors:
            assert monitor.poll(5000), "the client socket never saw the server go away"
            assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED


def _start(cluster: Cluster, name: str, *flags: str) -> None:
    cluster.start(name, [sys.executable, "-m", "replay", *flags, *cluster.server_args(*OVERRIDES)])


def _kill(cluster: Cluster, name: str) -> None:
    cluster.procs[name].send_signal(signal.SIGKILL)
    assert cluster.wait_exit(name, 5) == -signal.SIGKILL


@pytest.mark.slow
def test_killed_replay_server_restores_its_snapshot_and_clients_reconnect(cluster: Cluster) -> None:
    ctx = zmq.Context()
    try:
        _start(cluster, "replay")
        client = _Client(ctx, cluster.port_base)
        assert client.request("stats_request").meta["size"] == 0, cluster.diagnostics()

        # 10 messages in, then a snapshot of exactly them.
        sent = [client.send(seed) for seed in range(10)]
        client.stats_when(640)
        done = client.request("snapshot_request")
        assert done.kind == "snapshot_done", done.meta
        assert (done.meta["transitions"], done.meta["inserted"]) == (640, 640)
        path = cluster.run_dir / "replay" / "snapshot.npz"
        assert done.meta["path"] == str(path)

        # The file holds what we pushed, in insert order, with the priorities we gave, each capped at the
        # highest priority so far (1: no learner has raised it).
        with np.load(path, allow_pickle=False) as npz:
            snapshot = {key: npz[key] for key in npz.files}
        for name in ("obs", "action", "reward", "discount", "next_obs"):
            pushed = np.concatenate([batch[name] for batch in sent])
            np.testing.assert_array_equal(snapshot[f"data.{name}"][:640], pushed, err_msg=name)
        raw = np.minimum(np.concatenate([batch["priority"] for batch in sent]), np.float32(1.0)).astype(np.float64)
        np.testing.assert_allclose(snapshot["priorities"][:640], (raw + EPS) ** ALPHA, rtol=1e-12)
        np.testing.assert_array_equal(snapshot["ids"][:640], np.arange(640))
        assert int(snapshot["cursor"]) == 640 and int(snapshot["size"]) == 640
        snapshot_ids = set(snapshot["ids"][snapshot["ids"] >= 0].tolist())

        # 5 more arrive after the snapshot; the crash loses them.
        for seed in range(100, 105):
            client.send(seed)
        client.stats_when(960)
        _kill(cluster, "replay")
        client.wait_disconnected()

        # Restored: exactly the snapshot, through the very sockets used before the crash.
        _start(cluster, "replay-restored", "--restore")
        stats = client.request("stats_request", timeout_s=20).meta
        assert (stats["size"], stats["inserted"]) == (640, 640), f"{stats}\n{cluster.diagnostics()}"
        batch = client.request("sample", {"batch_size": 128, "beta": 0.4})
        assert batch.kind == "batch", batch.meta
        assert set(batch.arrays["id"].tolist()) <= snapshot_ids
        np.testing.assert_array_equal(batch.arrays["obs"], snapshot["data.obs"][batch.arrays["index"]])
        assert "restored 640 transitions" in cluster.log("replay-restored")

        # And it keeps ingesting from the same PUSH socket, numbering on from the snapshot.
        for seed in range(200, 203):
            client.send(seed)
        assert client.stats_when(832)["size"] == 832

        # What an actor sends while the server is down waits in its socket and arrives after the restart.
        assert client.request("snapshot_request").meta["inserted"] == 832
        _kill(cluster, "replay-restored")
        client.wait_disconnected()
        for seed in range(300, 304):
            client.send(seed)
        _start(cluster, "replay-restored-again", "--restore")
        assert client.stats_when(832 + 4 * BATCH, timeout_s=20)["size"] == 1000  # the ring is full now
    finally:
        ctx.destroy(linger=0)
