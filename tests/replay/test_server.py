"""The replay server over real ZeroMQ sockets: stores good batches, rejects and counts bad ones, serves."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from common.config import load_config
from common.envs import EnvSpec
from common.sockets import free_port_base
from common.wire import PROTOCOL_VERSION, Encoder, decode, encode
from replay.server import ReplayServer
from tests.helpers import serving, wait_for

SPEC = EnvSpec((4,), np.dtype(np.float32), 2)


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    config = load_config(
        "cartpole",
        ["replay.min_size=128", "replay.capacity=1000", "replay.samples_per_insert=0", "net.max_message_mb=1"],
    )
    config = dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))
    srv = ReplayServer(config, SPEC)
    with serving(srv):
        yield srv


def _transitions(n: int, *, obs_dim: int = 4, action: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {
        "obs": rng.standard_normal((n, obs_dim)).astype(np.float32),
        "action": np.full(n, action, dtype=np.int64),
        "reward": np.ones(n, dtype=np.float32),
        "discount": np.full(n, 0.97, dtype=np.float32),
        "next_obs": rng.standard_normal((n, obs_dim)).astype(np.float32),
        "priority": np.ones(n, dtype=np.float32),
        "version": np.zeros(n, dtype=np.int64),
    }


def test_bad_messages_are_counted_and_the_server_keeps_serving(server: ReplayServer) -> None:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{server.config.net.ingest_port}")
    enc = Encoder("test-actor")
    bad = [
        [b"\xc1garbage"],  # not msgpack
        [b"\x93\x01\x02\x03"],  # msgpack, but not a map
        encode("transitions", {"actor_index": 0}, _transitions(8), seq=1)[:-1],  # a frame missing
        encode("transitions", {"actor_index": 0}, _transitions(8, obs_dim=5), seq=2),  # wrong obs shape
        encode("transitions", {"actor_index": 0}, _transitions(8, action=7), seq=3),  # action out of range
        encode("transitions", {"actor_index": 0}, _transitions(65), seq=4),  # more than send_size
        encode("stop", {"reason": "x"}, seq=5),  # a kind the ingest socket does not take
    ]
    wrong_version = encode("transitions", {"actor_index": 0}, _transitions(8), seq=6)
    import msgpack

    header = msgpack.unpackb(wrong_version[0])
    header["v"] = 99
    wrong_version[0] = msgpack.packb(header)
    bad.append(wrong_version)
    for frames in bad:
        push.send_multipart(frames)
    push.send_multipart(enc("transitions", {"actor_index": 3}, _transitions(64)))
    wait_for(lambda: server.buffer.inserted_total == 64)
    wait_for(lambda: sum(server.rejected.values()) == len(bad))
    assert server.rejected["wrong_version"] == 1
    assert server.rejected["wrong_obs_spec"] == 1
    assert server.rejected["bad_action"] == 1
    assert server.rejected["batch_too_large"] == 1
    assert server.rejected["unexpected_kind"] == 1
    assert server.stored_by_actor[3] == 64

    # Sampling still works, and priority updates land.
    push.send_multipart(enc("transitions", {"actor_index": 3}, _transitions(64)))
    wait_for(lambda: server.buffer.inserted_total == 128)
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{server.config.net.sample_port}")
    learner = Encoder("test-learner")
    dealer.send_multipart(learner("sample", {"batch_size": 32, "beta": 0.5}))
    assert dealer.poll(5000)
    batch = decode(dealer.recv_multipart(), expect=("batch",))
    assert batch.arrays["obs"].shape == (32, 4) and batch.arrays["weight"].shape == (32,)
    index, ids = batch.arrays["index"], batch.arrays["id"]
    dealer.send_multipart(
        learner("priorities", arrays={"index": index, "id": ids, "priority": np.full(32, 5.0, np.float32)})
    )
    wait_for(lambda: server.buffer.max_priority >= 5.0)

    # A request with another protocol version gets a clear error reply, not silence.
    frames = learner("stats_request")
    header = msgpack.unpackb(frames[0])
    header["v"] = PROTOCOL_VERSION + 1
    dealer.send_multipart([msgpack.packb(header)])
    assert dealer.poll(5000)
    reply = decode(dealer.recv_multipart(), expect=("error",))
    assert reply.meta["reason"] == "wrong_version"
    dealer.send_multipart(learner("stats_request"))
    assert dealer.poll(5000)
    stats = decode(dealer.recv_multipart(), expect=("replay_stats",))
    assert stats.meta["size"] == 128 and stats.meta["rejected"]["wrong_version"] == 2
    ctx.destroy(linger=0)


def test_oversized_message_is_dropped_by_the_socket(server: ReplayServer) -> None:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{server.config.net.ingest_port}")
    limit = server.config.net.max_message_mb << 20
    push.send_multipart([b"x" * (limit + 1)])
    time.sleep(0.3)
    # The oversized peer is disconnected by ZeroMQ; a fresh, well-behaved one is still served.
    push2 = ctx.socket(zmq.PUSH)
    push2.connect(f"tcp://127.0.0.1:{server.config.net.ingest_port}")
    push2.send_multipart(Encoder("ok")("transitions", {"actor_index": 0}, _transitions(16)))
    wait_for(lambda: server.buffer.inserted_total == 16)
    ctx.destroy(linger=0)


def test_malformed_priority_update_is_rejected_not_fatal(server: ReplayServer) -> None:
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{server.config.net.sample_port}")
    enc = Encoder("test-learner")
    # Right first dimension, wrong rank: passes the wire schema, must not reach the buffer.
    arrays = {"index": np.zeros(4, np.int64), "id": np.zeros((4, 2), np.int64), "priority": np.ones(4, np.float32)}
    dealer.send_multipart(enc("priorities", arrays=arrays))
    arrays = {"index": np.zeros(4, np.int64), "id": np.zeros(4, np.int64), "priority": np.ones((4, 3), np.float32)}
    dealer.send_multipart(enc("priorities", arrays=arrays))
    wait_for(lambda: server.rejected["bad_priorities"] == 2)
    dealer.send_multipart(enc("stats_request"))
    assert dealer.poll(5000), "the server stopped answering after a malformed priority update"
    assert decode(dealer.recv_multipart()).kind == "replay_stats"
    ctx.destroy(linger=0)
