"""A peer with a valid key but bad intent, against a real ReplayServer over real sockets."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from common.config import load_config
from common.envs import EnvSpec
from common.sockets import free_port_base
from common.wire import Encoder, decode
from replay.server import ReplayServer
from tests.replay.test_server import _transitions, _wait_for

SPEC = EnvSpec((4,), np.dtype(np.float32), 2)


def _start(overrides: list[str]) -> Iterator[ReplayServer]:
    config = load_config("cartpole", ["net.max_message_mb=1", *overrides])
    config = dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))
    srv = ReplayServer(config, SPEC)
    stop = threading.Event()
    thread = threading.Thread(target=srv.run, args=(stop,), kwargs={"log_interval_s": 60}, daemon=True)
    thread.start()
    yield srv
    stop.set()
    thread.join(5)
    srv.close()


@pytest.fixture
def limited() -> Iterator[ReplayServer]:
    """The CartPole preset's rate limiter, a small buffer."""
    yield from _start(["replay.min_size=128", "replay.capacity=5000"])


def _dealer(ctx: zmq.Context, server: ReplayServer) -> zmq.Socket:
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{server.config.net.sample_port}")
    return dealer


def _ask(dealer: zmq.Socket, frames: list) -> object:
    dealer.send_multipart(frames)
    assert dealer.poll(5000), "no reply: the server is stuck or dead"
    return decode(dealer.recv_multipart())


def test_unservable_sample_is_refused_and_does_not_block_the_queue(limited: ReplayServer) -> None:
    assert limited.limiter is not None, "the preset must rate limit for this test"
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{limited.config.net.ingest_port}")
    enc = Encoder("actor")
    for _ in range(4):
        push.send_multipart(enc("transitions", {"actor_index": 0}, _transitions(64)))
    _wait_for(lambda: limited.buffer.inserted_total >= 128)
    dealer = _dealer(ctx, limited)
    learner = Encoder("learner")
    reply = _ask(dealer, learner("sample", {"batch_size": 2000, "beta": 0.5}))
    assert reply.kind == "error" and reply.meta["reason"] == "unservable_sample"
    reply = _ask(dealer, learner("sample", {"batch_size": 32, "beta": 0.5}))
    assert reply.kind == "batch" and reply.meta["size"] == 32
    assert limited.rejected["unservable_sample"] == 1
    ctx.destroy(linger=0)


def test_huge_integers_are_refused_and_replies_still_work(limited: ReplayServer) -> None:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{limited.config.net.ingest_port}")
    enc = Encoder("actor")
    huge = 2**64 - 1
    for stream in ("a", "b"):
        push.send_multipart(enc("stream_end", {"actor_index": 0, "stream": stream, "sent": huge, "dropped": 0}))
    push.send_multipart(enc("transitions", {"actor_index": huge}, _transitions(8)))
    _wait_for(lambda: limited.rejected["out_of_range"] == 3)
    dealer = _dealer(ctx, limited)
    learner = Encoder("learner")
    stats = _ask(dealer, learner("stats_request"))
    assert stats.kind == "replay_stats" and stats.meta["rejected"]["out_of_range"] == 3
    reply = _ask(dealer, learner("snapshot_request"))
    assert reply.kind == "error" and reply.meta["reason"] == "snapshots_disabled"
    assert _ask(dealer, learner("stats_request")).kind == "replay_stats"
    ctx.destroy(linger=0)
