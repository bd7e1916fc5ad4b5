"""The learner's replay client against a real replay server, inline (CPU) and threaded (CUDA's mode)."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import torch
import zmq

from common.config import load_config
from common.envs import EnvSpec
from common.sockets import free_port_base
from common.wire import encode
from learner.replay_client import ReplayClient
from replay.server import ReplayServer

SPEC = EnvSpec((4,), np.dtype(np.float32), 2)
STORED = 512


def _fill(port: int) -> None:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    rng = np.random.default_rng(0)
    for seq in range(STORED // 64):
        arrays = {
            "obs": rng.standard_normal((64, 4)).astype(np.float32),
            "action": rng.integers(0, 2, 64),
            "reward": np.ones(64, np.float32),
            "discount": np.full(64, 0.97, np.float32),
            "next_obs": rng.standard_normal((64, 4)).astype(np.float32),
            "priority": np.ones(64, np.float32),
            "version": np.zeros(64, np.int64),
        }
        push.send_multipart(encode("transitions", {"actor_index": 0}, arrays, seq=seq + 1))
    push.close(linger=5000)
    ctx.term()


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "threaded"])
def test_batches_arrive_and_priorities_reach_replay(threaded: bool) -> None:
    overrides = ["replay.min_size=256", "replay.capacity=1000", "replay.samples_per_insert=0", "learner.batch_size=32"]
    config = load_config("cartpole", overrides)
    config = dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))
    server = ReplayServer(config, SPEC)
    stop = threading.Event()
    serving = threading.Thread(target=server.run, args=(stop,), kwargs={"log_interval_s": 60}, daemon=True)
    serving.start()
    ctx = zmq.Context()
    client = ReplayClient(config, "127.0.0.1", pin_memory=False, ctx=ctx, threaded=threaded)
    try:
        _fill(config.net.ingest_port)
        client.start()
        first = None
        deadline = time.monotonic() + 20
        while first is None:
            assert time.monotonic() < deadline, "no batch from a replay server holding data"
            first = client.get_batch(timeout=0.2)
        assert first.obs.shape == (32, 4) and first.obs.dtype == torch.float32
        assert first.index.shape == (32,) and (first.weight <= 1).all()
        # One transition made overwhelmingly likely, the rest of that batch unlikely: later batches show it.
        favourite = int(first.index[0])
        priority = np.full(32, 1e-6, np.float32)
        priority[0] = 1e6
        client.send_priorities(first.index, first.id, priority)
        time.sleep(0.3)  # let what was already sampled before the update drain
        drawn = []
        deadline = time.monotonic() + 20
        while len(drawn) < 20 * 32:
            assert time.monotonic() < deadline, f"only {len(drawn)} samples arrived"
            batch = client.get_batch(timeout=0.2)
            if batch is not None:
                drawn.extend(batch.index.tolist())
        share = drawn[-10 * 32 :].count(favourite) / (10 * 32)
        assert share > 0.5, f"the priority update did not reach replay ({share:.0%} of samples)"
        assert client.stats.get("size") == STORED and client.decode_errors == 0
    finally:
        client.close()
        stop.set()
        serving.join(5)
        server.close()
        ctx.destroy(linger=0)
