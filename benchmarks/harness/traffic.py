"""What a benchmark's processes share (the run config, the transition shape) and the synthetic ingest
traffic: valid transitions as an actor would send them, and the pusher process that re-sends them.

Why synthetic: building the messages once, before the clock starts, keeps the sender's own cost out of
what is measured; making them valid (and, for stacked frames, overlapping as a real actor's do) keeps
the receiver's checks and frame deduplication doing the work they do in a real run.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import zmq

from harness.processes import Event


def run_config(port_base: int, overrides: Sequence[str], preset: str = "cartpole") -> Any:
    """The run config every process of one benchmark shares: a preset, overrides, and our ports."""
    from common.config import load_config

    config = load_config(preset, overrides)
    return dataclasses.replace(config, net=config.net.with_port_base(port_base))


@dataclasses.dataclass(frozen=True)
class Shape:
    """An environment's observation and action space, as plain values (they cross to spawned children)."""

    name: str
    obs_shape: tuple[int, ...]
    obs_dtype: str
    num_actions: int

    def env_spec(self) -> Any:
        from common.envs import EnvSpec

        return EnvSpec(self.obs_shape, np.dtype(self.obs_dtype), self.num_actions)

    @property
    def transition_bytes(self) -> int:
        """Bytes of one `transitions` row on the wire: obs, next_obs, action, reward, discount, priority, version."""
        obs = int(np.prod(self.obs_shape)) * np.dtype(self.obs_dtype).itemsize
        return 2 * obs + 8 + 4 + 4 + 4 + 8


CARTPOLE = Shape("cartpole", (4,), "float32", 2)
ATARI = Shape("atari", (4, 84, 84), "uint8", 6)
SHAPES = {"cartpole": CARTPOLE, "atari": ATARI}


def transitions_arrays(shape: Shape, count: int, seed: int) -> dict[str, np.ndarray]:
    """`count` valid random transitions (what an actor would send), so the server's checks all pass."""
    rng = np.random.default_rng(seed)
    full = (count, *shape.obs_shape)
    if np.dtype(shape.obs_dtype) == np.uint8:
        obs = rng.integers(0, 256, full, dtype=np.uint8)
        next_obs = rng.integers(0, 256, full, dtype=np.uint8)
    else:
        obs = rng.standard_normal(full).astype(shape.obs_dtype)
        next_obs = rng.standard_normal(full).astype(shape.obs_dtype)
    return {
        "obs": obs,
        "action": rng.integers(0, shape.num_actions, count, dtype=np.int64),
        "reward": rng.standard_normal(count).astype(np.float32),
        "discount": np.full(count, 0.99**3, dtype=np.float32),
        "next_obs": next_obs,
        "priority": np.abs(rng.standard_normal(count)).astype(np.float32) + 0.01,
        "version": np.zeros(count, dtype=np.int64),
    }


STREAM_MESSAGES = 32  # distinct messages a pusher cycles through: more frames than replay's reuse window


def frame_stream_arrays(
    shape: Shape, count: int, seed: int, messages: int = 1, envs: int = 4, n_step: int = 3
) -> list[dict[str, np.ndarray]]:
    """`messages` consecutive messages of `count` stacked-frame transitions each, as an actor with
    `envs` environments sends them: the stacks of each env overlap (one new frame a step), `next_obs`
    is the stack `n_step` steps later, and each message continues where the previous one stopped, so
    frame deduplication, in the message and across messages in replay, saves what it saves in a real
    run (no episode ends: slightly optimistic)."""
    rng = np.random.default_rng(seed)
    stack, frame_shape = shape.obs_shape[0], shape.obs_shape[1:]
    per_env = -(-count // envs)
    steps = messages * per_env
    stacks = []
    for _ in range(envs):
        frames = rng.integers(0, 256, (steps + stack + n_step, *frame_shape), dtype=np.uint8)
        stacks.append(np.stack([frames[t : t + stack] for t in range(steps + n_step)]))
    out = []
    for m in range(messages):
        window = slice(m * per_env, (m + 1) * per_env)
        later = slice(m * per_env + n_step, (m + 1) * per_env + n_step)
        arrays = transitions_arrays(Shape(shape.name, (1,), "float32", shape.num_actions), count, seed + m)
        arrays["obs"] = np.concatenate([s[window] for s in stacks])[:count]
        arrays["next_obs"] = np.concatenate([s[later] for s in stacks])[:count]
        out.append(arrays)
    return out


def transitions_frames(shape: Shape, count: int, actor_index: int, seed: int, messages: int = 1) -> list[list[Any]]:
    """Ingest messages as the reference actor sends them (`frame_transitions` for stacked frames):
    one for vector observations, `messages` consecutive ones of a stream for stacked frames."""
    from common.frame_dedup import dedup_stacks
    from common.wire import encode

    sender = f"bench-pusher-{actor_index}"
    if len(shape.obs_shape) != 3:
        arrays = transitions_arrays(shape, count, seed)
        return [encode("transitions", {"actor_index": actor_index}, arrays, sender=sender, seq=1)]
    out = []
    for arrays in frame_stream_arrays(shape, count, seed, messages):
        arrays["frames"], arrays["obs_frames"], arrays["next_obs_frames"] = dedup_stacks(
            arrays.pop("obs"), arrays.pop("next_obs")
        )
        out.append(encode("frame_transitions", {"actor_index": actor_index}, arrays, sender=sender, seq=1))
    return out


def frames_bytes(frames: Sequence[Any]) -> int:
    return sum(memoryview(f).nbytes for f in frames)


def pusher_main(
    index: int,
    port: int,
    shape: Shape,
    send_size: int,
    send_hwm: int,
    rate: Any,
    sent: Any,
    stop: Event,
    limit: int,
) -> None:
    """Re-send prebuilt ingest messages (one, or a stream of STREAM_MESSAGES for stacked frames, in a
    cycle) over a PUSH socket made like an actor's.

    `rate[0]` is this pusher's target in transitions/s (0: as fast as the receiver takes them) and may
    change while running; `sent[index]` counts transitions handed to ZeroMQ; `limit` > 0 stops after
    that many. Building the messages once keeps the pusher's own cost out of the measurement.
    """
    from common.sockets import BULK_KERNEL_BUFFER, connect, make_socket

    stream = transitions_frames(shape, send_size, index, seed=1000 + index, messages=STREAM_MESSAGES)
    position = 0
    ctx = zmq.Context()
    push = make_socket(ctx, zmq.PUSH, hwm=send_hwm, kernel_buffer_bytes=BULK_KERNEL_BUFFER, heartbeats=False)
    connect(push, "127.0.0.1", port)
    next_send: float | None = None
    try:
        while not stop.is_set() and not (limit and sent[index] >= limit):
            target = rate[0]
            if target > 0:
                now = time.monotonic()
                if next_send is None or now - next_send > 1.0:
                    next_send = now  # (re)start the schedule without a catch-up burst
                if next_send > now:
                    time.sleep(min(next_send - now, 0.05))
                    continue
                next_send += send_size / target
            else:
                next_send = None
            if push.poll(100, zmq.POLLOUT):
                push.send_multipart(stream[position % len(stream)], copy=False)
                position += 1
                sent[index] += send_size
    finally:
        # A bounded fill must arrive whole; an endless stream's queued tail is worth nothing.
        push.close(linger=5000 if limit else 0)
        ctx.term()
