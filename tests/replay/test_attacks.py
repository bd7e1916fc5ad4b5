"""A peer that sends valid-looking but hostile messages to a real replay server over real sockets: each
is refused and counted, and the server keeps serving the well-behaved peers."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from common.config import load_config
from common.envs import EnvSpec, env_spec
from common.sockets import free_port_base
from common.wire import Encoder, decode
from replay.server import ReplayServer
from tests.helpers import serving, wait_for

WAIT_S = 10.0  # some of these floods take a while on a loaded machine
SPEC = EnvSpec((4,), np.dtype(np.float32), 2)


def _start(overrides: list[str], spec: EnvSpec | None = None) -> Iterator[ReplayServer]:
    """A server on the CartPole preset; `spec`: the run's (default: a shape-only spec, no bounds)."""
    config = load_config("cartpole", ["replay.capacity=4000", "net.max_message_mb=1", *overrides])
    config = dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))
    srv = ReplayServer(config, spec or SPEC)
    with serving(srv):
        yield srv


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    """The CartPole preset's rate limiter (samples_per_insert 8), a small buffer."""
    yield from _start(["replay.min_size=128"])


@pytest.fixture
def waiting_server() -> Iterator[ReplayServer]:
    """min_size above anything stored: every sample request waits, so each one queues."""
    yield from _start(["replay.min_size=2000"])


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _transitions(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.uniform(-0.05, 0.05, (n, 4)).astype(np.float32),
        "action": np.zeros(n, dtype=np.int64),
        "reward": np.ones(n, dtype=np.float32),
        "discount": np.full(n, 0.97, dtype=np.float32),
        "next_obs": rng.uniform(-0.05, 0.05, (n, 4)).astype(np.float32),
        "priority": np.ones(n, dtype=np.float32),
        "version": np.zeros(n, dtype=np.int64),
    }


def _push(ctx: zmq.Context, server: ReplayServer) -> zmq.Socket:
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{server.config.net.ingest_port}")
    return push


def _dealer(ctx: zmq.Context, server: ReplayServer, identity: bytes | None = None) -> zmq.Socket:
    dealer = ctx.socket(zmq.DEALER)
    if identity is not None:
        dealer.setsockopt(zmq.IDENTITY, identity)
    dealer.connect(f"tcp://127.0.0.1:{server.config.net.sample_port}")
    return dealer


def _fill(ctx: zmq.Context, server: ReplayServer, n: int) -> None:
    push, enc = _push(ctx, server), Encoder("actor")
    for i in range(n // 64):
        push.send_multipart(enc("transitions", {"actor_index": 0}, _transitions(64, i)))
    wait_for(lambda: server.buffer.inserted_total >= n, timeout=WAIT_S)


def _reply(dealer: zmq.Socket, timeout_ms: int = 5000):
    assert dealer.poll(timeout_ms), "no reply"
    return decode(dealer.recv_multipart())


def _stats(dealer: zmq.Socket) -> dict:
    dealer.send_multipart(Encoder("probe")("stats_request"))
    reply = _reply(dealer)
    assert reply.kind == "replay_stats"
    return reply.meta


# ---- 1. sample requests ----------------------------------------------------------------------------


def test_unservable_sample_is_refused_and_does_not_block_later_ones(server: ReplayServer, ctx) -> None:
    _fill(ctx, server, 192)  # the limiter holds inserts back beyond 208 until something is sampled
    learner, enc = _dealer(ctx, server), Encoder("learner")
    # 2000 < capacity, but above the most the CartPole rate limiter can ever allow (2 x tolerance = 1280).
    learner.send_multipart(enc("sample", {"batch_size": 2000, "beta": 0.4}))
    reply = _reply(learner)
    assert reply.kind == "error" and reply.meta["reason"] == "unservable_sample"
    assert server.rejected["unservable_sample"] == 1
    # 1200 is servable in principle but not now (192 inserted); a later batch of 32 must not wait behind it.
    learner.send_multipart(enc("sample", {"batch_size": 1200, "beta": 0.4}))
    learner.send_multipart(enc("sample", {"batch_size": 32, "beta": 0.4}))
    reply = _reply(learner)
    assert reply.kind == "batch" and reply.meta["size"] == 32


def test_pending_samples_are_bounded_per_peer_and_in_total(waiting_server: ReplayServer, ctx) -> None:
    srv = waiting_server
    flood = _dealer(ctx, srv, b"flooder")
    enc = Encoder("flooder")
    for _ in range(100):
        flood.send_multipart(enc("sample", {"batch_size": 32, "beta": 0.4}))
    for _ in range(36):
        reply = _reply(flood)
        assert reply.kind == "error" and reply.meta["reason"] == "too_many_pending"
    assert srv.rejected["too_many_pending"] == 36 and len(srv._pending) == 64
    # Many peers, each within its own bound: the total bound holds.
    peers = [_dealer(ctx, srv, f"peer-{i}".encode()) for i in range(16)]
    for peer in peers:
        for _ in range(64):
            peer.send_multipart(enc("sample", {"batch_size": 32, "beta": 0.4}))
    wait_for(lambda: len(srv._pending) + srv.rejected["pending_full"] == 64 + 16 * 64, timeout=WAIT_S)
    assert len(srv._pending) == 1024 and srv.rejected["pending_full"] == 64
    assert _stats(_dealer(ctx, srv))["rejected"]["pending_full"] == 64


_DEAF_PEER = """
import sys, time, zmq
from common.wire import Encoder
deaf = zmq.Context().socket(zmq.DEALER)
deaf.setsockopt(zmq.RCVHWM, 1)
deaf.setsockopt(zmq.RCVBUF, 4096)  # the kernel holds little for it either
deaf.setsockopt(zmq.SNDHWM, 100_000)
deaf.connect(sys.argv[1])
for _ in range(40_000):  # each answered; the replies fill its queue, which it never reads
    deaf.send_multipart(Encoder("deaf")("stats_request"))
time.sleep(120)
"""


def test_a_peer_that_never_reads_its_replies_cannot_freeze_the_server(server: ReplayServer, ctx) -> None:
    # In its own process: libzmq may abort a process that tears down a socket in this state.
    address = f"tcp://127.0.0.1:{server.config.net.sample_port}"
    deaf = subprocess.Popen([sys.executable, "-c", _DEAF_PEER, address], cwd=Path(__file__).resolve().parents[2])
    try:
        wait_for(lambda: server.rejected["reply_failed"] > 0, timeout=60)
        stats = _stats(_dealer(ctx, server))  # a well-behaved peer is still answered
        assert stats["rejected"]["reply_failed"] > 0
    finally:
        deaf.kill()
        deaf.wait()


# ---- 2. integer ranges -----------------------------------------------------------------------------


def test_huge_integers_are_refused_and_replies_still_work(server: ReplayServer, ctx) -> None:
    push, enc = _push(ctx, server), Encoder("actor")
    huge = 2**64 - 1
    for stream in ("a", "b"):
        push.send_multipart(enc("stream_end", {"actor_index": 0, "stream": stream, "sent": huge, "dropped": 0}))
    push.send_multipart(enc("transitions", {"actor_index": huge}, _transitions(8)))
    wait_for(lambda: server.rejected["out_of_range"] == 3, timeout=WAIT_S)
    learner = _dealer(ctx, server)
    assert _stats(learner)["rejected"]["out_of_range"] == 3
    learner.send_multipart(Encoder("learner")("snapshot_request"))
    reply = _reply(learner)
    assert reply.kind == "error" and reply.meta["reason"] == "snapshots_disabled"
    assert _stats(learner)["rejected"]["out_of_range"] == 3


def test_an_exception_in_one_message_is_counted_and_the_server_goes_on(server: ReplayServer, ctx) -> None:
    _fill(ctx, server, 192)
    calls = []

    def broken_update(*args: object) -> int:  # a fault injected into one handler: any bug it stands for
        calls.append(1)
        raise RuntimeError("injected\nfault")

    server.buffer.update_priorities = broken_update  # type: ignore[method-assign]
    learner, enc = _dealer(ctx, server), Encoder("learner")
    arrays = {"index": np.zeros(4, np.int64), "id": np.zeros(4, np.int64), "priority": np.ones(4, np.float32)}
    for _ in range(3):
        learner.send_multipart(enc("priorities", arrays=arrays))
    wait_for(lambda: server.rejected["internal_error"] == 3, timeout=WAIT_S)
    learner.send_multipart(enc("sample", {"batch_size": 32, "beta": 0.4}))
    assert _reply(learner).kind == "batch"
    assert _stats(learner)["rejected"]["internal_error"] == 3 and len(calls) == 3


# ---- 3. the stream ledger is bounded ---------------------------------------------------------------


@pytest.fixture
def unlimited_server() -> Iterator[ReplayServer]:
    """No rate limiter: thousands of one-row inserts are stored as fast as they come."""
    yield from _start(["replay.min_size=128", "replay.samples_per_insert=0"])


def test_the_stream_ledger_is_bounded(unlimited_server: ReplayServer, ctx) -> None:
    srv = unlimited_server
    cap = srv.ledger.max_streams
    push, enc = _push(ctx, srv), Encoder("actor")

    def send(stream: str) -> None:
        meta = {"actor_index": 1, "stream": stream, "sent_before": 0, "count": 1}
        push.send_multipart(enc("transitions", meta, _transitions(1)))

    for i in range(cap):
        send(f"s{i}")
    wait_for(lambda: srv.buffer.inserted_total == cap, timeout=WAIT_S)
    send("new")  # every stream open: a new one is refused, counted, and not silently dropped
    wait_for(lambda: srv.rejected["too_many_streams"] == 1, timeout=WAIT_S)
    assert len(srv.ledger.streams) == cap
    push.send_multipart(enc("stream_end", {"actor_index": 1, "stream": "s0", "sent": 1, "dropped": 0}))
    send("new")  # now the closed stream makes room: forgotten, its columns kept in the totals
    wait_for(lambda: srv.buffer.inserted_total == cap + 1, timeout=WAIT_S)
    assert len(srv.ledger.streams) == cap and (1, "s0") not in srv.ledger.streams
    assert srv.ledger.forgotten["streams"] == 1 and srv.ledger.totals()["stored"] == cap + 1


# ---- 4. magnitudes ---------------------------------------------------------------------------------


@pytest.fixture
def cartpole_server() -> Iterator[ReplayServer]:
    """The real CartPole observation space: x in [-4.8, 4.8] (refused beyond +-14.4), angle in [-0.42, 0.42],
    velocities unbounded."""
    yield from _start(["replay.min_size=128", "replay.samples_per_insert=0"], env_spec(load_config("cartpole").env))


def test_huge_magnitudes_are_refused_and_accounted(cartpole_server: ReplayServer, ctx) -> None:
    srv = cartpole_server
    push, enc = _push(ctx, srv), Encoder("actor")
    sent = 0
    hostile = []
    for column, row, value in [
        ("obs", (0, 1), 3e38),  # an unbounded velocity, beyond replay.max_abs_obs
        ("next_obs", (1, 0), 15.0),  # the cart's position, beyond [-4.8, 4.8] by more than its width
        ("reward", (2,), 1e7),
        ("priority", (3,), 1e30),
    ]:
        data = _transitions(8)
        data[column][row] = value
        hostile.append(data)
    reasons = ["obs_out_of_bounds", "obs_out_of_bounds", "reward_out_of_range", "bad_priority"]
    for data in [*hostile, _transitions(8)]:
        meta = {"actor_index": 2, "stream": "st", "sent_before": sent, "count": 8}
        push.send_multipart(enc("transitions", meta, data))
        sent += 8
    wait_for(lambda: srv.buffer.inserted_total == 8, timeout=WAIT_S)
    assert srv.rejected["obs_out_of_bounds"] == 2 and srv.rejected["reward_out_of_range"] == 1
    assert srv.rejected["bad_priority"] == 1
    record = srv.ledger.streams[(2, "st")]  # nothing silently lost: the refused rows are in the books
    assert record.stored == 8 and sum(record.rejected.values()) == 32 and record.lost == 0
    assert set(record.rejected) == set(reasons)

    learner, lenc = _dealer(ctx, srv), Encoder("learner")
    for priority in (1e30, -1.0):
        arrays = {
            "index": np.zeros(4, np.int64),
            "id": np.zeros(4, np.int64),
            "priority": np.full(4, priority, np.float32),
        }
        learner.send_multipart(lenc("priorities", arrays=arrays))
    wait_for(lambda: srv.rejected["bad_priorities"] == 2, timeout=WAIT_S)
    assert srv.buffer.max_priority <= 1.0


def test_inflated_actor_priorities_cannot_claim_the_batches(cartpole_server: ReplayServer, ctx) -> None:
    srv = cartpole_server
    push, enc = _push(ctx, srv), Encoder("actor")
    for i in range(8):  # 512 honest transitions at priority 1
        push.send_multipart(enc("transitions", {"actor_index": 0}, _transitions(64, i)))
    inflated = _transitions(64, 99)
    inflated["reward"][:] = 7.0  # to tell its rows apart in the batches
    inflated["priority"][:] = 1e5  # within replay.max_priority, so stored
    push.send_multipart(enc("transitions", {"actor_index": 1}, inflated))
    wait_for(lambda: srv.buffer.inserted_total == 576, timeout=WAIT_S)
    learner, lenc = _dealer(ctx, srv), Encoder("learner")
    rewards = []
    for _ in range(20):
        learner.send_multipart(lenc("sample", {"batch_size": 64, "beta": 0.4}))
        reply = _reply(learner)
        assert reply.kind == "batch"
        rewards.append(reply.arrays["reward"])
    share = float((np.concatenate(rewards) == 7.0).mean())
    # 64 of 576 rows: about 11% of the samples at equal priority; unclamped, 1e5 ** 0.6 gives it 99%.
    assert share < 0.3, f"the inflated peer got {share:.0%} of the sampled rows"
