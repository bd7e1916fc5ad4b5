"""An actor written from docs/protocol.md alone: pyzmq, msgpack, numpy and gymnasium, nothing of distdqn.

It stands for an actor from another codebase, so it must not import `actor`, `common`, `learner` or
`replay` (test_conformance.py checks its imports, and it reports the modules it ended up with). Each
step follows a section of the document: framing, socket options, joining with index -1, the run
config, Q from the published weights (MLP torso only: a minimal actor), epsilon-greedy acting, n-step
transitions with their stream fields, backpressure with reports kept flowing, and the stop with its
balanced stream_end.

Run as a script: `foreign_actor.py --learner HOST:PORT --report FILE`. It exits 0 once the run's
`stop` arrived and its stream was closed, after writing what it did to FILE as JSON.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import math
import os
import secrets
import socket
import sys
import time
from collections import deque
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # a few rows per step: a second BLAS thread only spins

import gymnasium as gym  # noqa: E402
import msgpack  # noqa: E402
import numpy as np  # noqa: E402
import zmq  # noqa: E402

PROTOCOL_VERSION = 4
DTYPES = frozenset({"uint8", "int8", "int32", "int64", "float16", "float32", "float64", "bool"})
PROJECT_PACKAGES = ("actor", "common", "learner", "replay")
LINGER_MS, PUSH_CLOSE_LINGER_MS = 500, 3000
KERNEL_BUFFER = 65536
SEND_SLICE_MS = 100
STREAM_END_WAIT_MS = 4000
HELLO_EVERY_S, JOIN_TIMEOUT_S = 2.0, 60.0


# ---- framing (docs: Framing) ---------------------------------------------------------------------
class Wire:
    """A msgpack header map with keys in the documented order, then one little-endian frame per array."""

    def __init__(self, sender: str) -> None:
        self.sender = sender
        self.seq = 0

    def encode(self, kind: str, meta: dict | None = None, arrays: dict[str, np.ndarray] | None = None) -> list:
        self.seq += 1
        specs, frames = [], []
        for name, array in (arrays or {}).items():
            array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            specs.append([name, array.dtype.name, list(array.shape)])
            frames.append(array.tobytes())
        header = {"v": PROTOCOL_VERSION, "k": kind, "s": self.sender, "n": self.seq, "m": meta or {}, "a": specs}
        return [msgpack.packb(header, use_bin_type=True), *frames]


def decode(frames: list[bytes]) -> tuple[str, dict, dict[str, np.ndarray]] | None:
    """(kind, meta, arrays), or None for anything that breaks the documented rules."""
    try:
        header = msgpack.unpackb(frames[0], raw=False)
    except Exception:  # msgpack raises several types for garbage
        return None
    if not isinstance(header, dict) or type(header.get("v")) is not int or header["v"] != PROTOCOL_VERSION:
        return None
    specs, meta = header.get("a"), header.get("m")
    if not isinstance(specs, list) or not isinstance(meta, dict) or len(specs) != len(frames) - 1:
        return None
    arrays = {}
    for spec, frame in zip(specs, frames[1:], strict=True):
        try:
            name, dtype, shape = spec
            wire_dtype = np.dtype(dtype).newbyteorder("<") if dtype in DTYPES else None
            if wire_dtype is None or len(frame) != math.prod(shape) * wire_dtype.itemsize:
                return None
            array = np.frombuffer(frame, wire_dtype).reshape(shape)
        except (TypeError, ValueError):
            return None
        if wire_dtype.kind == "f" and not np.isfinite(array).all():
            return None
        arrays[name] = array
    return header.get("k"), meta, arrays


def subscription_prefix(kind: str) -> bytes:
    """0x86 (six keys), the str "v", the version, the str "k", the kind: how every header starts."""
    return b"\x86" + msgpack.packb("v") + msgpack.packb(PROTOCOL_VERSION) + msgpack.packb("k") + msgpack.packb(kind)


# ---- sockets (docs: Socket options) --------------------------------------------------------------
def secure(sock: zmq.Socket, keys: tuple[bytes, bytes, bytes] | None) -> None:
    """CURVE client keys (own public, own secret, server public) on every socket, before connect."""
    if keys is not None:
        sock.setsockopt(zmq.CURVE_PUBLICKEY, keys[0])
        sock.setsockopt(zmq.CURVE_SECRETKEY, keys[1])
        sock.setsockopt(zmq.CURVE_SERVERKEY, keys[2])


def load_keys(secret_path: str, server_path: str) -> tuple[bytes, bytes, bytes] | None:
    if not secret_path:
        return None
    import zmq.auth

    public, secret = zmq.auth.load_certificate(secret_path)
    server, _ = zmq.auth.load_certificate(server_path)
    return public, secret, server


def stream_socket(ctx: zmq.Context, kind: int, hwm: int) -> zmq.Socket:
    """SUB and PUSH: bounded queues, no heartbeats (their reader may pause), TCP keepalive instead."""
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 5)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
    return sock


def control_socket(ctx: zmq.Context) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.IMMEDIATE, 1)  # no hello queued for a learner not yet reached
    sock.setsockopt(zmq.SNDHWM, 1024)
    sock.setsockopt(zmq.RCVHWM, 1024)
    sock.setsockopt(zmq.MAXMSGSIZE, 64 << 20)
    sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)
    sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
    sock.setsockopt(zmq.HEARTBEAT_TTL, 5000)
    return sock


def is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ---- the network (docs: Computing Q from the published weights) ----------------------------------
class MLPQNetwork:
    def __init__(self, obs_size: int, hidden: list[int], num_actions: int, dueling: bool) -> None:
        self.shapes: dict[str, tuple[int, ...]] = {}
        width = obs_size
        for i, out in enumerate(hidden):
            self.shapes[f"torso.layers.{2 * i}.weight"] = (out, width)
            self.shapes[f"torso.layers.{2 * i}.bias"] = (out,)
            width = out
        heads = {"value": 1, "advantage": num_actions} if dueling else {"q": num_actions}
        for name, out in heads.items():
            self.shapes[f"{name}.weight"] = (out, width)
            self.shapes[f"{name}.bias"] = (out,)
        self.layers = len(hidden)
        self.dueling = dueling
        self.params: dict[str, np.ndarray] = {}

    def fits(self, arrays: dict[str, np.ndarray]) -> bool:
        return set(arrays) == set(self.shapes) and all(arrays[k].shape == s for k, s in self.shapes.items())

    def load(self, arrays: dict[str, np.ndarray]) -> None:
        self.params = {name: np.array(a, dtype=np.float32) for name, a in arrays.items()}

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        p = self.params
        x = np.asarray(obs).reshape(len(obs), -1).astype(np.float32)
        for i in range(self.layers):  # a ReLU after every torso layer, the last one too
            x = np.maximum(x @ p[f"torso.layers.{2 * i}.weight"].T + p[f"torso.layers.{2 * i}.bias"], 0)
        if not self.dueling:
            return x @ p["q.weight"].T + p["q.bias"]
        value = x @ p["value.weight"].T + p["value.bias"]
        advantage = x @ p["advantage.weight"].T + p["advantage.bias"]
        return value + advantage - advantage.mean(axis=1, keepdims=True)


# ---- the actor (docs: Life of an actor) ----------------------------------------------------------
class ForeignActor:
    def __init__(self, learner: str, keys: tuple[bytes, bytes, bytes] | None) -> None:
        self.host, port = learner.rsplit(":", 1)
        self.keys = keys
        self.ctx = zmq.Context()
        self.wire = Wire(f"foreign-{os.getpid()}")
        self.control = control_socket(self.ctx)
        secure(self.control, keys)
        self.control.connect(f"tcp://{self.host}:{port}")
        self.stream = secrets.token_hex(4)
        self.version, self.run_id = -1, ""
        self.applied: list[int] = []
        self.stop_reason: str | None = None
        self.env_steps = self.sent = self.dropped = self.reports = 0
        self.returns: list[float] = []
        self.lengths: list[int] = []
        self.next_report = 0.0

    def _request(self, frames: list, want: tuple[str, ...], timeout_s: float) -> tuple | None:
        try:
            self.control.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:  # not connected yet (ZMQ_IMMEDIATE): nothing queued, retry soon
            time.sleep(0.1)
            return None
        deadline = time.monotonic() + timeout_s
        while self.control.poll(max(1, int((deadline - time.monotonic()) * 1000))):
            msg = decode(self.control.recv_multipart())
            if msg is not None and msg[0] in want:
                return msg
        return None

    def join(self) -> None:
        meta = {"role": "actor", "actor_index": -1, "host": socket.gethostname(), "pid": os.getpid()}
        meta["instance"] = secrets.token_hex(8)  # the same on every retry: the learner answers it once
        hello = self.wire.encode("hello", meta)
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while time.monotonic() < deadline:
            msg = self._request(hello, ("welcome", "error"), HELLO_EVERY_S)  # the same hello every time
            if msg is not None:
                if msg[0] == "error":
                    raise SystemExit(f"the learner refused: {msg[1]}")
                _, welcome, _ = msg
                self.setup(welcome)
                return
        raise SystemExit("no welcome from the learner")

    def setup(self, welcome: dict) -> None:
        config = welcome["config"]
        self.index, self.run_id = welcome["actor_index"], welcome["run_id"]
        env, net, ac = config["env"], config["network"], config["actor"]
        self.config = config
        n, e, base, alpha = ac["num_actors"], env["num_envs"], ac["epsilon_base"], ac["epsilon_alpha"]
        if ac.get("epsilon_over", "actors") == "slots":  # env j is global slot (i mod N) * E + j of N * E
            slots = [(self.index % n) * e + j for j in range(e)]
            ladder = [base if n * e == 1 else base ** (1 + alpha * g / (n * e - 1)) for g in slots]
        else:
            ladder = [base if n == 1 else base ** (1 + alpha * (self.index % n) / (n - 1))] * e
        self.epsilons = np.array([welcome["epsilon"]] * e if "epsilon" in welcome else ladder, np.float64)
        self.epsilon = float(self.epsilons.mean())  # what actor_stats reports
        if net["torso"] != "mlp":
            raise SystemExit("this minimal actor computes MLP networks only")
        kwargs = {"max_episode_steps": env["max_episode_steps"]} if env["max_episode_steps"] else {}
        self.envs = [gym.make(env["id"], **kwargs) for _ in range(env["num_envs"])]
        space = self.envs[0].observation_space
        self.obs_dtype, self.num_actions = space.dtype, int(self.envs[0].action_space.n)
        self.q = MLPQNetwork(int(np.prod(space.shape)), net["hidden"], self.num_actions, net["dueling"])
        cfg_net = config["net"]
        host = cfg_net["public_host"] or self.host
        if is_loopback(host) and not is_loopback(self.host):
            host = self.host
        self.sub = stream_socket(self.ctx, zmq.SUB, 4)
        self.sub.setsockopt(zmq.MAXMSGSIZE, cfg_net["max_message_mb"] << 20)
        for kind in ("stop", "weights"):
            self.sub.setsockopt(zmq.SUBSCRIBE, subscription_prefix(kind))
        secure(self.sub, self.keys)
        self.sub.connect(f"tcp://{host}:{cfg_net['weights_port']}")
        self.push = stream_socket(self.ctx, zmq.PUSH, cfg_net["send_hwm"])
        self.push.setsockopt(zmq.SNDBUF, KERNEL_BUFFER)
        self.push.setsockopt(zmq.RCVBUF, KERNEL_BUFFER)
        secure(self.push, self.keys)
        self.push.connect(f"tcp://{host}:{cfg_net['ingest_port']}")

    def fetch_weights(self) -> None:
        deadline = time.monotonic() + JOIN_TIMEOUT_S
        while time.monotonic() < deadline:
            msg = self._request(self.wire.encode("get_weights"), ("weights", "error"), 2.0)
            if msg is not None and msg[0] == "weights" and self.q.fits(msg[2]):
                self.q.load(msg[2])
                self.version, self.run_id = msg[1]["version"], msg[1].get("run_id", self.run_id)
                self.initial_version = self.version
                return
            time.sleep(0.5)
        raise SystemExit("no weights from the learner")

    def drain_broadcast(self) -> None:
        """Newest weights win; a stop ends the run."""
        newest = None
        while True:
            try:
                msg = decode(self.sub.recv_multipart(zmq.NOBLOCK))
            except zmq.Again:
                break
            if msg is None:
                continue
            kind, meta, arrays = msg
            if kind == "stop":
                self.stop_reason = meta["reason"]
            elif kind == "weights" and (
                meta["version"] > self.version or meta.get("run_id", self.run_id) != self.run_id
            ):
                newest = msg
        if newest is not None and self.q.fits(newest[2]):
            self.q.load(newest[2])
            self.version, self.run_id = newest[1]["version"], newest[1].get("run_id", self.run_id)
            self.applied.append(self.version)

    def report(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next_report:
            return
        self.next_report = now + self.config["actor"]["stats_interval_s"]
        meta = {
            "actor_index": self.index,
            "env_steps": self.env_steps,
            "transitions_sent": self.sent,
            "weight_version": self.version,
            "epsilon": self.epsilon,
            "transitions_dropped": self.dropped,
            "stream": self.stream,
        }
        arrays = {
            "episode_returns": np.array(self.returns, np.float32),
            "episode_lengths": np.array(self.lengths, np.int64),
        }
        self.returns, self.lengths = [], []
        try:
            self.control.send_multipart(self.wire.encode("actor_stats", meta, arrays), zmq.NOBLOCK)
            self.reports += 1
        except zmq.Again:
            pass  # cumulative counters: the next report carries them

    def send(self, rows: list[tuple], wait_ms: int | None = None) -> None:
        """Push one batch, waiting while the socket is full; weights and reports keep flowing meanwhile."""
        columns = list(zip(*rows, strict=True))
        arrays = {
            "obs": np.array(columns[0], self.obs_dtype),
            "action": np.array(columns[1], np.int64),
            "reward": np.array(columns[2], np.float32),
            "discount": np.array(columns[3], np.float32),
            "next_obs": np.array(columns[4], self.obs_dtype),
            "priority": np.array(columns[5], np.float32),
            "version": np.array(columns[6], np.int64),
        }
        meta = {"actor_index": self.index, "stream": self.stream, "sent_before": self.sent, "count": len(rows)}
        frames = self.wire.encode("transitions", meta, arrays)
        deadline = None if wait_ms is None else time.monotonic() + wait_ms / 1000
        while deadline is None or time.monotonic() < deadline:
            if self.push.poll(SEND_SLICE_MS, zmq.POLLOUT):
                try:
                    self.push.send_multipart(frames, zmq.NOBLOCK)
                    self.sent += len(rows)
                    return
                except zmq.Again:
                    continue
            self.drain_broadcast()
            self.report()
            if self.stop_reason is not None and deadline is None:
                break
        self.dropped += len(rows)

    def transitions(self, pending: deque, final_obs: Any, terminated: bool, flush: bool) -> list[tuple]:
        """n-step rows (obs, action, reward, discount, next_obs, q_sa, version) that this step completes."""
        n, gamma = self.config["learner"]["n_step"], self.config["learner"]["gamma"]
        rows = []
        while pending and (flush or len(pending) == n):
            k = len(pending)
            reward = sum(gamma**j * pending[j][2] for j in range(k))
            discount = 0.0 if terminated else gamma**k
            obs, action, _, q_sa, version = pending.popleft()
            rows.append((obs, action, reward, discount, final_obs, q_sa, version))
            if not flush:
                break
        return rows

    def run(self, deadline: float) -> None:
        send_size = self.config["actor"]["send_size"]
        rng = np.random.default_rng(int.from_bytes(os.urandom(4), "little"))
        obs = [env.reset(seed=int(rng.integers(2**31)))[0] for env in self.envs]
        pending = [deque() for _ in self.envs]
        ep_return, ep_length = [0.0] * len(self.envs), [0] * len(self.envs)
        outbox: list[tuple] = []
        while self.stop_reason is None and time.monotonic() < deadline:
            self.drain_broadcast()
            self.report()
            q = self.q(np.stack(obs))
            explore = rng.random(len(obs)) < self.epsilons
            actions = np.where(explore, rng.integers(self.num_actions, size=len(obs)), q.argmax(axis=1))
            built = []
            for e, env in enumerate(self.envs):
                next_obs, reward, terminated, truncated, _ = env.step(int(actions[e]))
                self.env_steps += 1
                ep_return[e] += float(reward)
                ep_length[e] += 1
                pending[e].append((obs[e], int(actions[e]), float(reward), float(q[e, actions[e]]), self.version))
                built += self.transitions(pending[e], next_obs, terminated, terminated or truncated)
                if terminated or truncated:
                    self.returns.append(ep_return[e])
                    self.lengths.append(ep_length[e])
                    ep_return[e], ep_length[e] = 0.0, 0
                    next_obs, _ = env.reset()
                obs[e] = next_obs
            if built:
                next_values = self.q(np.stack([row[4] for row in built])).max(axis=1)
                for row, value in zip(built, next_values, strict=True):
                    priority = abs(row[2] + row[3] * value - row[5])  # |TD error| under this network
                    outbox.append((row[0], row[1], row[2], row[3], row[4], priority, row[6]))
            while len(outbox) >= send_size and self.stop_reason is None:
                self.send(outbox[:send_size])
                outbox = outbox[send_size:]
        if outbox:  # the partly filled message: sent, or counted as dropped
            self.send(outbox, wait_ms=STREAM_END_WAIT_MS)

    def finish(self) -> bool:
        """stream_end on the same PUSH, a final report, then a closing linger that lets the tail leave."""
        meta = {"actor_index": self.index, "stream": self.stream, "sent": self.sent, "dropped": self.dropped}
        ended = bool(self.push.poll(STREAM_END_WAIT_MS, zmq.POLLOUT))
        if ended:
            self.push.send_multipart(self.wire.encode("stream_end", meta))
        self.report(force=True)
        self.push.close(linger=PUSH_CLOSE_LINGER_MS)
        self.sub.close()
        self.control.close()
        self.ctx.term()
        for env in self.envs:
            env.close()
        return ended


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learner", required=True, help="learner control address HOST:PORT")
    parser.add_argument("--report", required=True, help="where to write what this actor did (JSON)")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="give up when no stop came by then")
    parser.add_argument("--curve-secret-key", default="", help="this actor's key file (pyzmq certificate)")
    parser.add_argument("--curve-server-key", default="", help="the servers' public key file")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.max_seconds
    actor = ForeignActor(args.learner, load_keys(args.curve_secret_key, args.curve_server_key))
    actor.join()
    actor.fetch_weights()
    actor.run(deadline)
    ended = actor.finish()
    report = {
        "actor_index": actor.index,
        "epsilon": actor.epsilon,
        "stream": actor.stream,
        "sent": actor.sent,
        "dropped": actor.dropped,
        "env_steps": actor.env_steps,
        "reports": actor.reports,
        "initial_version": actor.initial_version,
        "applied_versions": actor.applied,
        "stop_reason": actor.stop_reason,
        "stream_end_sent": ended,
        "project_modules": sorted(m for m in sys.modules if m.split(".")[0] in PROJECT_PACKAGES),
    }
    with open(args.report, "w", encoding="utf-8") as f:
        json.dump(report, f)
    return 0 if actor.stop_reason is not None and ended else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
