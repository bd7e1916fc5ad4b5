"""A replay server stopped (SIGSTOP) long enough for heartbeats to drop the learner's sampling connection,
then continued: the learner's replay client is answered again within seconds.

The requests in flight die with the dropped connection, and replay, which meanwhile holds requests from
the connection's old identity, reports itself waiting for samples. The client must not wait on what
replay reports: a request unanswered for `learner.sample_timeout_s` is sent again, on a fresh socket and
batch file, so that no late reply or late write reaches a batch in use.
"""

from __future__ import annotations

import dataclasses
import signal
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
import zmq

from common.config import load_config
from common.envs import EnvSpec
from common.wire import encode
from learner.replay_client import ReplayClient

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

SPEC = EnvSpec((4,), np.dtype(np.float32), 2)
OVERRIDES = ("replay.min_size=256", "replay.capacity=1000", "replay.samples_per_insert=0", "learner.batch_size=32")
STOPPED_S = 12.0  # past the 5 s heartbeat timeout (plus its 1 s interval): the connection is dropped
BACK_WITHIN_S = 5.0


def _fill(port: int, count: int = 512) -> None:
    """Transitions whose observations say which insert they are: obs[1] = id, next_obs[3] = id + 0.5 (the
    velocities, which CartPole's observation space leaves unbounded; position and angle stay 0)."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    for seq in range(count // 64):
        ids = np.arange(seq * 64, (seq + 1) * 64, dtype=np.float32)
        obs, next_obs = np.zeros((64, 4), np.float32), np.zeros((64, 4), np.float32)
        obs[:, 1], next_obs[:, 3] = ids, ids + 0.5
        arrays = {
            "obs": obs,
            "action": np.zeros(64, np.int64),
            "reward": np.ones(64, np.float32),
            "discount": np.full(64, 0.97, np.float32),
            "next_obs": next_obs,
            "priority": np.ones(64, np.float32),
            "version": np.zeros(64, np.int64),
        }
        push.send_multipart(encode("transitions", {"actor_index": 0}, arrays, seq=seq + 1))
    push.close(linger=5000)
    ctx.term()


def _identified(batch) -> bool:
    ids = torch.from_numpy(batch.id.astype(np.float32))
    return bool(torch.equal(batch.obs[:, 1], ids) and torch.equal(batch.next_obs[:, 3], ids + 0.5))


def _batches(client: ReplayClient, count: int, timeout_s: float) -> float | None:
    """Seconds until `count` batches arrived (each checked to hold its own rows), or None at the deadline."""
    start = time.monotonic()
    taken = 0
    while taken < count:
        if time.monotonic() - start > timeout_s:
            return None
        batch = client.get_batch(timeout=0.05)
        if batch is not None:
            assert _identified(batch), "a batch holds rows other than those its ids name"
            taken += 1
    return time.monotonic() - start


def test_learner_samples_again_within_seconds_of_a_stopped_replay_continuing(cluster: Cluster) -> None:
    replay = cluster.start_replay(*OVERRIDES)
    config = load_config("cartpole", [*OVERRIDES, "learner.sample_timeout_s=2"])
    config = dataclasses.replace(config, net=config.net.with_port_base(cluster.port_base))
    _fill(config.net.ingest_port)
    ctx = zmq.Context()
    client = ReplayClient(config, "127.0.0.1", pin_memory=False, ctx=ctx, spec=SPEC)
    try:
        client.start()
        assert _batches(client, 20, timeout_s=60) is not None, f"no batches at all\n{cluster.diagnostics()}"
        file_before = client.links[0].batch_file.path if client.links[0].batch_file is not None else None

        replay.send_signal(signal.SIGSTOP)
        try:
            stopped_until = time.monotonic() + STOPPED_S
            while time.monotonic() < stopped_until:  # the learner's loop keeps asking meanwhile
                client.get_batch(timeout=0.05)
        finally:
            replay.send_signal(signal.SIGCONT)

        took = _batches(client, 20, timeout_s=BACK_WITHIN_S)
        assert took is not None, (
            f"no 20 batches within {BACK_WITHIN_S} s of replay continuing (lost {client.requests_lost})\n"
            f"{cluster.diagnostics()}"
        )
        print(f"20 batches {took:.2f} s after SIGCONT; {client.requests_lost} requests taken as lost")
        assert client.requests_lost > 0
        if file_before is not None:  # late writes for the lost requests land in the file given up
            assert client.links[0].batch_file is not None and client.links[0].batch_file.path != file_before
            assert client.batches_by_shared_memory > 0
    finally:
        client.close()
        ctx.destroy(linger=0)
