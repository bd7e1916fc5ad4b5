"""The learner's control server over real sockets: garbage is refused and counted, service goes on."""

from __future__ import annotations

import dataclasses
import time

import msgpack
import numpy as np
import zmq

from common.config import load_config
from common.sockets import free_port_base
from common.wire import Encoder, decode, encode
from learner.control import ControlServer


def _wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_bad_control_messages_are_refused_and_counted_then_service_goes_on() -> None:
    config = load_config("cartpole", ["net.max_message_mb=1"])
    config = dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))
    ctx = zmq.Context()
    control = ControlServer(config, ctx)
    control.set_weights(7, {"w": np.ones(3, np.float32)})
    control.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{config.net.learner_port}")
    try:
        dealer.send_multipart([b"\xc1 not msgpack"])
        dealer.send_multipart(encode("transitions", {"actor_index": 0}, {}, seq=1))  # not a control kind
        bad_rank = {"episode_returns": np.zeros((2, 2), np.float32), "episode_lengths": np.zeros(2, np.int64)}
        meta = {"actor_index": 0, "env_steps": 1, "transitions_sent": 0, "weight_version": 0}
        dealer.send_multipart(encode("actor_stats", meta, bad_rank, seq=2))
        header = msgpack.unpackb(encode("get_weights", seq=3)[0])
        header["v"] = 5
        dealer.send_multipart([msgpack.packb(header)])
        # The wrong version and the wrong kind are answered with a clear error.
        replies = []
        for _ in range(2):
            assert dealer.poll(5000)
            replies.append(decode(dealer.recv_multipart(), expect=("error",)).meta["reason"])
        assert sorted(replies) == ["unexpected_kind", "wrong_version"]
        # An oversized message never reaches a decoder: ZeroMQ drops it and the peer.
        big = ctx.socket(zmq.DEALER)
        big.connect(f"tcp://127.0.0.1:{config.net.learner_port}")
        big.send_multipart([b"x" * ((1 << 20) + 1)])
        _wait_for(lambda: sum(control.rejected.values()) == 4)
        assert control.rejected == {"bad_header": 1, "unexpected_kind": 1, "bad_shape": 1, "wrong_version": 1}

        # Still serving: a hello is welcomed and the weights come back.
        enc = Encoder("test-actor")
        dealer.send_multipart(enc("hello", {"role": "actor", "actor_index": 3}))
        assert dealer.poll(5000)
        welcome = decode(dealer.recv_multipart(), expect=("welcome",))
        assert welcome.meta["actor_index"] == 3
        dealer.send_multipart(enc("get_weights"))
        assert dealer.poll(5000)
        weights = decode(dealer.recv_multipart(), expect=("weights",))
        assert weights.meta["version"] == 7 and weights.meta["run_id"] == welcome.meta["run_id"]
        big.close(linger=0)
    finally:
        dealer.close(linger=0)
        control.close()
        ctx.destroy(linger=0)
