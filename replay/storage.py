"""What the replay server stores for a run: the buffer kind, its columns, and a message's rows in them.

Stacked frames (K, H, W) are stored as distinct frames (replay/frame_storage.py), everything else as
whole observations (replay/buffer.py); a message may carry either form, and is converted here.
"""

from __future__ import annotations

import numpy as np

from common.config import RunConfig
from common.envs import EnvSpec
from common.errors import StartupError
from common.frame_dedup import dedup_stacks
from common.wire import Message
from replay.buffer import FieldSpec, ReplayBuffer
from replay.frame_storage import FrameReplayBuffer


def uses_frame_storage(spec: EnvSpec, config: RunConfig) -> bool:
    """Stacked frames (K, H, W) are stored as distinct frames unless the config says otherwise."""
    return config.replay.frame_dedup and len(spec.obs_shape) == 3


def make_buffer(config: RunConfig, spec: EnvSpec) -> ReplayBuffer | FrameReplayBuffer:
    rc = config.replay
    common = {"prioritized": rc.prioritized, "alpha": rc.alpha, "seed": config.seed + 7919}
    if not uses_frame_storage(spec, config):
        return ReplayBuffer(rc.capacity, transition_fields(spec), **common)
    stack = spec.obs_shape[0]
    needed = 2 * stack * config.actor.send_size  # the most frames one message can carry
    if rc.capacity * rc.frames_per_transition < needed:
        raise StartupError(
            f"replay.capacity ({rc.capacity}) x replay.frames_per_transition ({rc.frames_per_transition:g}) "
            f"frames cannot hold one message of actor.send_size={config.actor.send_size} stacks of {stack} "
            f"frames ({needed} frames)"
        )
    return FrameReplayBuffer(
        rc.capacity, transition_fields(spec), frames_per_transition=rc.frames_per_transition, **common
    )


def transition_fields(spec: EnvSpec) -> dict[str, FieldSpec]:
    """The stored columns of one n-step transition."""
    obs = FieldSpec(spec.obs_shape, np.dtype(spec.obs_dtype))
    return {
        "obs": obs,
        "action": FieldSpec((), np.dtype(np.int64)),
        "reward": FieldSpec((), np.dtype(np.float32)),
        "discount": FieldSpec((), np.dtype(np.float32)),
        "next_obs": obs,
    }


def storage_batch(buffer: ReplayBuffer | FrameReplayBuffer, msg: Message) -> dict[str, np.ndarray]:
    """The columns the buffer stores, converting between full stacks and distinct frames as needed."""
    a = msg.arrays
    batch = {name: a[name] for name in ("action", "reward", "discount")}
    if isinstance(buffer, FrameReplayBuffer):
        if msg.kind == "transitions":  # a producer that sends full stacks: deduplicate them here
            batch["frames"], batch["obs_frames"], batch["next_obs_frames"] = dedup_stacks(a["obs"], a["next_obs"])
        else:
            batch.update(frames=a["frames"], obs_frames=a["obs_frames"], next_obs_frames=a["next_obs_frames"])
    elif msg.kind == "transitions":
        batch.update(obs=a["obs"], next_obs=a["next_obs"])
    else:
        batch.update(obs=a["frames"][a["obs_frames"]], next_obs=a["frames"][a["next_obs_frames"]])
    return batch
