"""Peers that abuse a live cluster, one per attack class, for the live attack test.

Each holds raw sockets of its own (no code from `actor/` or `learner/`), so it can send what no conforming
peer would: forged outcomes, absurd counters, floods, oversized or poisoned messages, requests that can
never be served. Where the cluster authenticates, the attacker uses the key it is given (an actor's).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import numpy as np
import zmq

from common.wire import Encoder

SecureClient = Callable[[zmq.Socket], None]


class Attacker:
    """Raw sockets to one cluster's four ports (P control, P+2 ingest, P+3 sampling)."""

    def __init__(self, ctx: zmq.Context, host: str, port_base: int, secure: SecureClient | None = None) -> None:
        self.ctx, self.host, self.port_base, self.secure = ctx, host, port_base, secure
        self.sockets: list[zmq.Socket] = []
        self.enc = Encoder("attacker")

    def _socket(self, kind: int, port: int, rcvhwm: int = 1000) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.SNDHWM, 100_000)
        if self.secure is not None:
            self.secure(sock)
        sock.connect(f"tcp://{self.host}:{port}")
        self.sockets.append(sock)
        return sock

    def control(self, rcvhwm: int = 1000) -> zmq.Socket:
        return self._socket(zmq.DEALER, self.port_base, rcvhwm)

    def ingest(self) -> zmq.Socket:
        return self._socket(zmq.PUSH, self.port_base + 2)

    def sampling(self, rcvhwm: int = 1000) -> zmq.Socket:
        return self._socket(zmq.DEALER, self.port_base + 3, rcvhwm)

    def send(self, sock: zmq.Socket, kind: str, meta: dict | None = None, arrays: dict | None = None) -> None:
        with contextlib.suppress(zmq.Again):  # refused or full: an attacker does not wait
            sock.send_multipart(self.enc(kind, meta, arrays), zmq.NOBLOCK)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)


def attack_control_plane(attacker: Attacker) -> None:
    """Forged evaluations and counters, hellos naming live actors, floods, an oversized report."""
    result = {"returns": np.full(10, 1e6, np.float32), "lengths": np.full(10, 500, np.int64)}
    stranger, actor = attacker.control(), attacker.control()
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
        attacker.send(attacker.control(), "hello", {"role": "actor", "actor_index": i % 2})
    flood = attacker.control()
    for i in range(3000):  # a hello flood, and peer text meant to forge log lines
        meta = {"role": "actor", "actor_index": -1, "instance": f"f{i}", "host": "h\nSOLVED: forged" + "x" * 65536}
        attacker.send(flood, "hello", meta)
    for _ in range(200):
        attacker.send(attacker.control(), "hello", {"role": "actor", "actor_index": -1, "host": "y" * 65536})
    huge = {"episode_returns": np.ones(1 << 24, np.float32), "episode_lengths": np.ones(1 << 24, np.int64)}
    meta = {"actor_index": 0, "env_steps": 1, "transitions_sent": 0, "weight_version": 0}
    attacker.send(attacker.control(), "actor_stats", meta, huge)  # 192 MiB: never buffered whole
    for _ in range(50):  # get_weights from peers that never read
        sock = attacker.control(rcvhwm=1)
        for _ in range(100):
            attacker.send(sock, "get_weights")


def cartpole_transitions(n: int, *, obs: float | None = None, priority: float = 1.0) -> dict[str, np.ndarray]:
    """CartPole-shaped transitions: random observations, or every observation set to `obs`."""
    rng = np.random.default_rng(n)
    shape = (n, 4)
    observations = rng.standard_normal(shape).astype(np.float32) if obs is None else np.full(shape, obs, np.float32)
    return {
        "obs": observations,
        "action": np.zeros(n, np.int64),
        "reward": np.ones(n, np.float32),
        "discount": np.full(n, 0.97, np.float32),
        "next_obs": observations.copy(),
        "priority": np.full(n, priority, np.float32),
        "version": np.zeros(n, np.int64),
    }


def attack_replay(attacker: Attacker) -> None:
    """Poisoned transitions, overflowing counters, churned streams, requests that can never be served."""
    push = attacker.ingest()
    for _ in range(4):  # finite but huge values, then non-finite ones
        attacker.send(push, "transitions", {"actor_index": 0}, cartpole_transitions(64, obs=3e38))
        attacker.send(push, "transitions", {"actor_index": 1}, cartpole_transitions(64, priority=1e30))
    attacker.send(push, "transitions", {"actor_index": 0}, cartpole_transitions(64, obs=float("nan")))
    attacker.send(push, "transitions", {"actor_index": 2**64 - 1}, cartpole_transitions(8))
    for _ in range(2):  # counters that overflow a ledger's sums
        meta = {"actor_index": 0, "stream": "overflow", "sent": 2**64 - 1, "dropped": 2**64 - 1}
        attacker.send(push, "stream_end", meta)
    for i in range(20_000):  # churned streams, each a new ledger entry (and log line) unless bounded
        stream = f"churn-{i}\nSOLVED: forged" + "z" * 200
        attacker.send(push, "stream_end", {"actor_index": 0, "stream": stream, "sent": 1, "dropped": 0})
    head = attacker.sampling(rcvhwm=1)
    attacker.send(head, "sample", {"batch_size": 2000, "beta": 0.4})  # more than can ever be served
    for _ in range(20_000):  # a queue that is never read
        attacker.send(head, "sample", {"batch_size": 32, "beta": 0.4})
    poison = {"index": np.arange(64, dtype=np.int64), "id": np.arange(64, dtype=np.int64)}
    for value in (float("nan"), float("inf"), 1e30, -1.0):  # priorities no learner would send
        attacker.send(head, "priorities", None, {**poison, "priority": np.full(64, value, np.float32)})
    probe = attacker.sampling()
    attacker.send(probe, "stats_request")
    attacker.send(probe, "snapshot_request")
