"""Stacked-frame observations through the replay server: either message kind in, the right stacks out."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from common.config import load_config
from common.envs import EnvSpec
from common.frame_dedup import dedup_stacks
from common.sockets import free_port_base
from common.wire import Encoder, decode
from replay.frame_storage import FrameReplayBuffer
from replay.server import ReplayServer
from tests.helpers import serving

STACK, SIDE, N_STEP = 4, 6, 3
SPEC = EnvSpec((STACK, SIDE, SIDE), np.dtype(np.uint8), 4)


def _episode(length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stacks of one episode (the first frame repeated at the start, as frame stacking pads) and the
    n-step next stacks, with frame t's pixels all equal to a value that names it."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(length + N_STEP, SIDE, SIDE), dtype=np.uint8)
    padded = np.concatenate([np.repeat(frames[:1], STACK - 1, axis=0), frames])
    stacks = np.stack([padded[t : t + STACK] for t in range(length + N_STEP)])
    return stacks[:length], stacks[N_STEP : N_STEP + length]


def _arrays(obs: np.ndarray, next_obs: np.ndarray, first_id: int) -> dict[str, np.ndarray]:
    count = obs.shape[0]
    return {
        "obs": obs,
        "action": np.arange(count, dtype=np.int64) % SPEC.num_actions,
        "reward": np.arange(first_id, first_id + count, dtype=np.float32),  # names the transition
        "discount": np.full(count, 0.97, np.float32),
        "next_obs": next_obs,
        "priority": np.ones(count, np.float32),
        "version": np.zeros(count, np.int64),
    }


def _as_frames(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    out = dict(arrays)
    out["frames"], out["obs_frames"], out["next_obs_frames"] = dedup_stacks(out.pop("obs"), out.pop("next_obs"))
    return out


@pytest.fixture(params=[True, False], ids=["frame-storage", "full-stacks"])
def server(request) -> Iterator[ReplayServer]:
    config = load_config(
        "cartpole",
        [
            "replay.min_size=16",
            "replay.capacity=256",
            "replay.samples_per_insert=0",
            "learner.batch_size=16",
            "actor.send_size=16",
            f"replay.frame_dedup={'true' if request.param else 'false'}",
        ],
    )
    config = dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))
    srv = ReplayServer(config, SPEC)
    assert isinstance(srv.buffer, FrameReplayBuffer) == request.param
    with serving(srv):
        yield srv


def test_both_kinds_are_stored_and_sampled_as_the_same_stacks(server: ReplayServer) -> None:
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{server.config.net.ingest_port}")
        send = Encoder("actor-0")
        expected: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        sent = 0
        for episode in range(6):
            obs, next_obs = _episode(16, seed=episode)
            arrays = _arrays(obs, next_obs, sent)
            for i in range(16):
                expected[sent + i] = (obs[i], next_obs[i])
            meta = {"actor_index": 0, "stream": "f", "sent_before": sent, "count": 16}
            if episode % 2:
                push.send_multipart(send("frame_transitions", meta, _as_frames(arrays)))
            else:
                push.send_multipart(send("transitions", meta, arrays))
            sent += 16
        bad = _as_frames(_arrays(*_episode(16, seed=99), sent))
        bad["obs_frames"][0, 0] = bad["frames"].shape[0]  # points past the message's frames
        push.send_multipart(send("frame_transitions", {"actor_index": 0, "stream": "f", "sent_before": sent}, bad))

        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(f"tcp://127.0.0.1:{server.config.net.sample_port}")
        learner = Encoder("learner")
        seen: set[int] = set()
        for _ in range(40):
            dealer.send_multipart(learner("sample", {"batch_size": 16, "beta": 0.5}))
            assert dealer.poll(5000), "no batch"
            batch = decode(dealer.recv_multipart(), expect=("batch",))
            assert batch.arrays["obs"].shape == (16, STACK, SIDE, SIDE)
            for row, name in enumerate(batch.arrays["reward"].astype(int)):
                obs, next_obs = expected[name]
                np.testing.assert_array_equal(batch.arrays["obs"][row], obs)
                np.testing.assert_array_equal(batch.arrays["next_obs"][row], next_obs)
                seen.add(name)
        assert len(seen) > 60  # both message kinds were among what was sampled
        assert any(name // 16 % 2 for name in seen) and any(not name // 16 % 2 for name in seen)
        assert server.buffer.inserted_total == 96
        assert server.rejected["bad_frames"] == 1
        assert server.ledger.streams[(0, "f")].rejected["bad_frames"] == 16
    finally:
        ctx.destroy(linger=0)
