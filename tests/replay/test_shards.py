"""Replay shards: each shard's config, and the priority mass a shard reports only when asked."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from common.config import load_config
from common.envs import EnvSpec
from common.errors import ConfigError
from common.shards import shard_config, shard_dir_name, shard_of_actor
from common.sockets import free_port_base
from common.wire import Encoder, decode
from replay.server import ReplayServer
from tests.helpers import serving

SPEC = EnvSpec((4,), np.dtype(np.float32), 2)


def _config(*overrides: str):
    config = load_config("cartpole", ["replay.min_size=128", "replay.capacity=1000", *overrides])
    return dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))


def test_each_shard_gets_its_ports_and_share() -> None:
    config = _config("replay.shards=3", "learner.batch_size=64", "replay.rate_tolerance=3000")
    net = config.net
    shards = [shard_config(config, k) for k in range(3)]
    assert [s.net.ingest_port for s in shards] == [net.ingest_port + 10 * k for k in range(3)]
    assert [s.net.sample_port for s in shards] == [net.sample_port + 10 * k for k in range(3)]
    assert all(s.replay.capacity == 334 and s.replay.shards == 1 for s in shards)
    assert all(s.replay.min_size == 64 for s in shards)  # ceil(128 / 3) = 43, but a shard serves whole batches
    assert shards[1].replay.rate_tolerance == 1000
    assert shards[0].net.learner_port == net.learner_port and shards[2].net.weights_port == net.weights_port
    assert [shard_of_actor(i, 3) for i in range(7)] == [0, 1, 2, 0, 1, 2, 0]
    assert [shard_dir_name(k) for k in range(3)] == ["replay", "replay-1", "replay-2"]
    unsharded = _config()
    assert shard_config(unsharded, 0) is unsharded


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        (["replay.shards=65"], "replay.shards"),
        (["replay.shards=4", "replay.capacity=200", "learner.batch_size=64"], "less than a shard's min_size"),
        (["replay.shards=3", "net.shard_port_stride=1"], "shard_port_stride"),  # shard 1's ingest = sample port
        (["replay.shards=2", "net.metrics_port=6000", "net.shard_port_stride=1000"], None),
    ],
)
def test_a_bad_shard_layout_is_refused_with_one_line(overrides: list[str], words: str | None) -> None:
    if words is None:
        load_config("cartpole", overrides)  # ports far apart: fine
        return
    with pytest.raises(ConfigError, match=words):
        load_config("cartpole", ["replay.min_size=128", *overrides])


def test_a_shard_beyond_the_runs_is_one_error_line(tmp_path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "replay", "--shard", "2", "replay.shards=2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: --shard: must be in [0, replay.shards=2), got 2"]


@pytest.fixture
def shard() -> Iterator[ReplayServer]:
    config = _config("replay.shards=2", "replay.samples_per_insert=0")
    srv = ReplayServer(shard_config(config, 1), SPEC, shard=1)
    with serving(srv):
        yield srv


def _fill(srv: ReplayServer, n: int) -> None:
    rng = np.random.default_rng(0)
    batch = {
        "obs": rng.standard_normal((n, 4)).astype(np.float32),
        "action": np.zeros(n, np.int64),
        "reward": np.ones(n, np.float32),
        "discount": np.full(n, 0.97, np.float32),
        "next_obs": rng.standard_normal((n, 4)).astype(np.float32),
    }
    srv.buffer.add(batch, rng.uniform(0.1, 2.0, n).astype(np.float32))


def test_mass_comes_back_only_when_asked(shard: ReplayServer) -> None:
    """The keys a v4 learner would refuse never reach it; a sharded learner gets the mass it chooses by."""
    ctx = zmq.Context()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{shard.config.net.sample_port}")
    enc = Encoder("learner")
    # (the test fills the buffer from its own thread only before the first request)
    _fill(shard, 200)
    mass = shard.buffer.mass
    assert 200 * 0.1**0.6 < mass < 200 * 2.0**0.6  # the sum of (p + eps)^alpha
    try:
        replies = {}
        for asked, meta in ((False, {}), (True, {"with_mass": True})):
            dealer.send_multipart(enc("stats_request", meta or None))
            dealer.send_multipart(enc("sample", {"batch_size": 32, "beta": 0.4, **meta}))
            for _ in range(2):
                assert dealer.poll(5000)
                msg = decode(dealer.recv_multipart())
                replies[asked, msg.kind] = msg.meta
        for kind in ("replay_stats", "batch"):
            assert "mass" not in replies[False, kind] and "stored" not in replies[False, kind]
        assert replies[True, "replay_stats"]["mass"] == pytest.approx(mass)
        assert replies[True, "batch"]["mass"] == pytest.approx(mass) and replies[True, "batch"]["stored"] == 200
    finally:
        dealer.close(linger=0)
        ctx.term()
