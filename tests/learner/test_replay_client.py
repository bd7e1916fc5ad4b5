"""The learner's replay client against a real replay server, inline (CPU) and threaded (CUDA's mode),
with batches over the socket and through the learner's shared-memory batch file."""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
import torch
import zmq

from common.config import load_config
from common.envs import EnvSpec
from common.shared_batches import available
from common.sockets import free_port_base
from common.wire import encode
from learner.replay_client import ReplayClient
from replay.server import ReplayServer

SPEC = EnvSpec((4,), np.dtype(np.float32), 2)
STORED = 512


def _fill(port: int, actor_index: int = 0) -> None:
    """STORED transitions whose observations say which insert they are: obs = id, next_obs = id + 0.5."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    rng = np.random.default_rng(0)
    for seq in range(STORED // 64):
        ids = np.repeat(np.arange(seq * 64, (seq + 1) * 64, dtype=np.float32)[:, None], 4, axis=1)
        arrays = {
            "obs": ids,
            "action": rng.integers(0, 2, 64),
            "reward": np.ones(64, np.float32),
            "discount": np.full(64, 0.97, np.float32),
            "next_obs": ids + 0.5,
            "priority": np.ones(64, np.float32),
            "version": np.zeros(64, np.int64),
        }
        push.send_multipart(encode("transitions", {"actor_index": actor_index}, arrays, seq=seq + 1))
    push.close(linger=5000)
    ctx.term()


def _config(*extra: str):
    overrides = ["replay.min_size=256", "replay.capacity=1000", "replay.samples_per_insert=0", "learner.batch_size=32"]
    config = load_config("cartpole", [*overrides, *extra])
    return dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))


@contextmanager
def _serving(config):
    """A replay server thread holding STORED identified transitions."""
    server = ReplayServer(config, SPEC)
    stop = threading.Event()
    serving = threading.Thread(target=server.run, args=(stop,), kwargs={"log_interval_s": 60}, daemon=True)
    serving.start()
    try:
        _fill(config.net.ingest_port)
        yield server
    finally:
        stop.set()
        serving.join(5)
        server.close()


def _take(client: ReplayClient, count: int, check=None) -> int:
    taken, deadline = 0, time.monotonic() + 30
    while taken < count:
        assert time.monotonic() < deadline, f"only {taken} batches arrived"
        batch = client.get_batch(timeout=0.2)
        if batch is not None:
            taken += 1
            if check is not None:
                check(batch)
    return taken


def _assert_identified(batch) -> None:
    """Each row's observations are those of the insert its id names, and stay so while the batch is in use."""
    ids = torch.from_numpy(batch.id.astype(np.float32))
    for _ in range(2):
        assert torch.equal(batch.obs[:, 0], ids) and torch.equal(batch.next_obs[:, 3], ids + 0.5)
        assert np.array_equal(batch.index, batch.id)  # 512 inserts into 1,000 slots: slot i holds insert i
        assert bool((batch.reward == 1).all()) and bool((batch.discount == np.float32(0.97)).all())
        assert bool((batch.weight > 0).all()) and bool((batch.weight <= 1).all())
        time.sleep(0.002)  # replay meanwhile answers the requests in flight, into other slots


needs_shm = pytest.mark.skipif(not available(), reason="/dev/shm is not a writable directory here")


@needs_shm
@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "threaded"])
def test_batches_through_shared_memory_hold_the_sampled_observations(threaded: bool) -> None:
    config = _config()
    ctx = zmq.Context()
    client = ReplayClient(config, "127.0.0.1", pin_memory=False, ctx=ctx, threaded=threaded, spec=SPEC)
    try:
        with _serving(config) as server:
            client.start()
            _take(client, 60, _assert_identified)
            assert client.batches_by_shared_memory >= 60 - config.learner.prefetch and client.batches_by_socket == 0
            assert server.batches_by_shared_memory >= client.batches_by_shared_memory
            path = client.links[0].batch_file.path if client.links[0].batch_file is not None else None
            assert path is not None and os.path.exists(path)
    finally:
        client.close()
        ctx.destroy(linger=0)
    assert not os.path.exists(path), "the learner's batch file outlived the client"


@needs_shm
def test_a_batch_file_replay_will_not_write_sends_batches_over_the_socket(caplog) -> None:
    """A file replay refuses (here: readable by others, as one of another user's would be) is given up."""
    config = _config()
    ctx = zmq.Context()
    client = ReplayClient(config, "127.0.0.1", pin_memory=False, ctx=ctx, spec=SPEC)
    try:
        with _serving(config) as server, caplog.at_level(logging.INFO):
            client.start()
            path = client.links[0].batch_file.path
            os.chmod(path, 0o644)
            _take(client, 20, _assert_identified)
            assert client.batches_by_shared_memory == 0 and client.batches_by_socket >= 20
            assert server.batches_by_shared_memory == 0
            assert client.links[0].batch_file is None and not os.path.exists(path)
            assert "not private" in caplog.text and "batches come over the socket" in caplog.text
    finally:
        client.close()
        ctx.destroy(linger=0)


@pytest.mark.parametrize("learner_side, replay_side", [(False, True), (True, False)], ids=["learner-off", "replay-off"])
def test_shared_memory_batches_off_on_either_side_means_the_socket(learner_side: bool, replay_side: bool) -> None:
    config = _config()

    def shm(on: bool):
        return dataclasses.replace(config, net=dataclasses.replace(config.net, shared_memory_batches=on))

    ctx = zmq.Context()
    client = ReplayClient(shm(learner_side), "127.0.0.1", pin_memory=False, ctx=ctx, spec=SPEC)
    try:
        with _serving(shm(replay_side)):
            client.start()
            _take(client, 10, _assert_identified)
            assert client.batches_by_shared_memory == 0 and client.links[0].batch_file is None
    finally:
        client.close()
        ctx.destroy(linger=0)


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
        deadline = time.monotonic() + 5  # the client asks for replay_stats once a second
        while client.stats.get("size") != STORED and time.monotonic() < deadline:
            client.get_batch(timeout=0.2)
        assert client.stats.get("size") == STORED and client.decode_errors == 0
    finally:
        client.close()
        stop.set()
        serving.join(5)
        server.close()
        ctx.destroy(linger=0)


class _CopyInFlight:
    """Stands in for the torch.cuda.Event that a CUDA learner hands over with priorities still being
    copied from the GPU (no GPU here): not passed until `land` is called."""

    def __init__(self) -> None:
        self.landed = threading.Event()

    def land(self) -> None:
        self.landed.set()

    def query(self) -> bool:
        return self.landed.is_set()

    def synchronize(self) -> None:
        assert self.landed.wait(10), "synchronize() waited on a copy that never landed"


@pytest.mark.parametrize("threaded", [False, True], ids=["inline", "threaded"])
def test_priorities_still_arriving_from_the_device_are_sent_once_they_have_landed(threaded: bool) -> None:
    """The update loop hands priorities over without waiting for their copy; none goes out before it has
    landed (it would carry whatever the buffer held), and later ones keep their order behind it."""
    config = _config()
    ctx = zmq.Context()
    client = ReplayClient(config, "127.0.0.1", pin_memory=False, ctx=ctx, threaded=threaded)
    try:
        with _serving(config) as server:
            client.start()
            batch = None
            while batch is None:
                batch = client.get_batch(timeout=5)
            before = server.buffer.max_priority
            priority = np.full(32, 1e-3, np.float32)
            copy = _CopyInFlight()
            if threaded:
                client.send_priorities(batch.index, batch.id, priority, ready=copy)
                priority[0] = 1e5  # what the copy leaves in the buffer when it lands
                client.send_priorities(batch.index[:1], batch.id[:1], np.full(1, 5e5, np.float32))
                time.sleep(0.3)
                _take(client, 4)
                assert server.buffer.max_priority == before, "priorities went out before their copy landed"
                copy.land()
                deadline = time.monotonic() + 10
                while server.buffer.max_priority != 5e5:
                    assert time.monotonic() < deadline, f"max priority {server.buffer.max_priority}"
                    _take(client, 1)
            else:  # inline, the client waits for the copy itself (CUDA learners use the thread)
                threading.Timer(0.2, copy.land).start()
                priority[0] = 1e5
                client.send_priorities(batch.index, batch.id, priority, ready=copy)
                assert copy.query()
                deadline = time.monotonic() + 10
                while server.buffer.max_priority != 1e5:
                    assert time.monotonic() < deadline, f"max priority {server.buffer.max_priority}"
                    _take(client, 1)
    finally:
        client.close()
        ctx.destroy(linger=0)


def test_requests_are_not_sent_again_while_replay_is_below_min_size() -> None:
    """Replay still filling cannot serve anyone: its fresh report of that is the one the timeout trusts,
    so requests wait (none taken as lost) and are answered as soon as there is enough data."""
    config = _config("learner.sample_timeout_s=0.5", f"replay.min_size={STORED + 88}")
    ctx = zmq.Context()
    client = ReplayClient(config, "127.0.0.1", pin_memory=False, ctx=ctx, spec=SPEC)
    try:
        with _serving(config):
            client.start()
            waited_until = time.monotonic() + 3
            while time.monotonic() < waited_until:
                assert client.get_batch(timeout=0.1) is None
            assert client.stats.get("size") == STORED and client.requests_lost == 0
            _fill(config.net.ingest_port, actor_index=1)
            _take(client, 5)
            assert client.requests_lost == 0
    finally:
        client.close()
        ctx.destroy(linger=0)
