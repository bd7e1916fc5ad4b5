"""A synthetic Atari-shaped env: stacks of four 84x84 uint8 frames, six actions, almost free to step.

Why: the Nature CNN (the network whose 6.75 MB of weights the namespace mode publishes) needs stacked
image observations, and a real Atari game costs a core per few actors. Each step shifts the stack by one
new random frame, as a frame-stacked game does, so replay's frame deduplication works as in a real run.
Importing this module registers it as `harness.frames_env:Frames-v0` (gymnasium imports the module named
before the colon), which is the `env.id` every process of the run is given.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

ENV_ID = "harness.frames_env:Frames-v0"
EPISODE_STEPS = 1000


class Frames(gym.Env):
    observation_space = gym.spaces.Box(0, 255, (4, 84, 84), np.uint8)
    action_space = gym.spaces.Discrete(6)

    def __init__(self, render_mode: str | None = None) -> None:
        self.render_mode = render_mode
        self.rng = np.random.default_rng()
        self.stack = np.zeros((4, 84, 84), np.uint8)
        self.t = 0

    def reset(self, *, seed: int | None = None, options: Any = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.rng = np.random.default_rng(seed)
        self.stack = self.rng.integers(0, 256, (4, 84, 84), dtype=np.uint8)
        self.t = 0
        return self.stack.copy(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        self.stack = np.concatenate([self.stack[1:], self.rng.integers(0, 256, (1, 84, 84), dtype=np.uint8)])
        self.t += 1
        reward = float(self.rng.random() < 0.01)
        return self.stack.copy(), reward, False, self.t >= EPISODE_STEPS, {}


if "Frames-v0" not in gym.registry:
    gym.register("Frames-v0", entry_point=Frames)
