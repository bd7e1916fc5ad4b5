"""The learner's replay client over two real replay shards (server threads on loopback), inline and
threaded: batches come from each shard in proportion to its priority mass, priorities go back to the
shard that served the batch, and a shard that stops is left out while the other keeps serving."""

from __future__ import annotations

import dataclasses
import time
from contextlib import ExitStack

import numpy as np
import pytest
import zmq

from common.config import load_config
from common.envs import EnvSpec
from common.shards import shard_config
from common.sockets import free_port_base
from common.wire import encode
from learner.replay_client import ReplayClient
from replay.server import ReplayServer
from tests.helpers import serving, wait_for

SPEC = EnvSpec((4,), np.dtype(np.float32), 2)
STORED = 256
PRIORITY = (1.0, 16.0)  # shard 1's mass is 16 ** 0.6 = 5.28 times shard 0's


def _config():
    overrides = ["replay.shards=2", "replay.min_size=128", "replay.capacity=1000", "replay.samples_per_insert=0"]
    config = load_config("cartpole", [*overrides, "learner.batch_size=32", "learner.prefetch=4"])
    return dataclasses.replace(config, net=config.net.with_port_base(free_port_base(24)))


def _fill(port: int, priority: float) -> None:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    for seq in range(STORED // 64):
        arrays = {
            "obs": np.zeros((64, 4), np.float32),
            "action": np.zeros(64, np.int64),
            "reward": np.ones(64, np.float32),
            "discount": np.full(64, 0.97, np.float32),
            "next_obs": np.zeros((64, 4), np.float32),
            "priority": np.full(64, priority, np.float32),
            "version": np.zeros(64, np.int64),
        }
        push.send_multipart(encode("transitions", {"actor_index": 0}, arrays, seq=seq + 1))
    push.close(linger=5000)
    ctx.term()


def _shards(stacks: list[ExitStack], config) -> list[ReplayServer]:
    """Shard k's server thread, filled with STORED transitions of priority PRIORITY[k], until stacks[k] closes."""
    servers = []
    for k, stack in enumerate(stacks):
        own = shard_config(config, k)
        servers.append(stack.enter_context(serving(ReplayServer(own, SPEC, shard=k))))
        _fill(own.net.ingest_port, PRIORITY[k])
    for server in servers:
        wait_for(lambda server=server: server.buffer.size == STORED)
    return servers


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "threaded"])
def test_batches_follow_the_shards_masses_and_priorities_go_home(threaded: bool) -> None:
    config = _config()
    ctx = zmq.Context()
    with ExitStack() as shard0, ExitStack() as shard1:
        servers = _shards([shard0, shard1], config)
        for server in servers:  # the learner's own updates may raise priorities: give shard 1 more mass
            index = np.arange(STORED, dtype=np.int64)
            server.buffer.update_priorities(index, index, np.full(STORED, PRIORITY[server.shard], np.float32))
        masses = [s.buffer.mass for s in servers]
        client = ReplayClient(config, "127.0.0.1", pin_memory=False, ctx=ctx, threaded=threaded)
        client.start()
        try:
            counts = [0, 0]
            deadline = time.monotonic() + 60
            while sum(counts) < 400:
                assert time.monotonic() < deadline, counts
                batch = client.get_batch(timeout=0.2)
                if batch is not None:
                    counts[batch.shard] += 1
            share = counts[1] / sum(counts)
            expected = masses[1] / sum(masses)
            assert abs(share - expected) < 0.08, (counts, expected)  # 5 binomial sds at n = 400
            # A batch's new priorities reach its own shard only.
            batch = None
            while batch is None or batch.shard != 0:
                batch = client.get_batch(timeout=0.5)
            client.send_priorities(batch.index, batch.id, np.full(len(batch.index), 500.0, np.float32), shard=0)
            wait_for(lambda: servers[0].buffer.max_priority == 500.0)
            assert servers[1].buffer.max_priority == PRIORITY[1]
            assert client.stats["shards_up"] == 2 and client.stats["size"] == 2 * STORED
        finally:
            client.close()
    ctx.term()


def test_a_stopped_shard_is_left_out_and_the_other_keeps_serving(caplog) -> None:
    config = _config()
    ctx = zmq.Context()
    caplog.set_level("WARNING", logger="learner.replay_client")
    with ExitStack() as shard0, ExitStack() as shard1:
        _shards([shard0, shard1], config)
        client = ReplayClient(config, "127.0.0.1", pin_memory=False, ctx=ctx, threaded=False)
        client.start()
        try:
            seen: set[int] = set()
            deadline = time.monotonic() + 60
            while seen != {0, 1}:
                assert time.monotonic() < deadline, seen
                batch = client.get_batch(timeout=0.2)
                if batch is not None:
                    seen.add(batch.shard)
            shard1.close()  # shard 1's server stops and closes its sockets
            wait_for(lambda: client.get_batch(timeout=0.05) is not None and client.shard_outages == 1, timeout=30)
            assert "replay shard 1/2 left out of sampling" in caplog.text
            got, since = 0, time.monotonic()
            while got < 50:  # served by shard 0 alone from now on
                assert time.monotonic() - since < 30, got
                batch = client.get_batch(timeout=0.2)
                if batch is not None:
                    assert batch.shard == 0
                    got += 1
            assert client.stats["shards_up"] == 1
        finally:
            client.close()
    ctx.term()
