"""Atari games as DQN and Ape-X saw them: `ALE/<Game>-v5` behind the standard DeepMind preprocessing.

DQN, Ape-X and the results that compare with them use this pipeline, and the presets' hyperparameters
were tuned on it, so a run compares with them only with every step in place. Wrappers, innermost first:

1. `AtariEnv` with `frameskip=1`, grayscale screens and `repeat_action_probability=env.sticky_actions`;
   `env.max_episode_steps` becomes the emulator's frame limit (4 frames a step).
2. gymnasium's `AtariPreprocessing`: 1..noop_max random no-op frames at a game's start, each step
   repeats the action for 4 frames and keeps the pixel-wise max of the last two, resized to 84x84 with
   `cv2.INTER_AREA`.
3. `GameScore` (training only), below every wrapper that changes episodes or rewards, so that it sees
   whole games and real points.
4. `EpisodicLife` (training only): a lost life ends the learner's episode, not the game.
5. `FireOnReset`, for games whose actions include FIRE (Breakout, Pong, ...): presses it at the start
   of every episode, and in evaluation also after a lost life, so a life always starts in play.
6. `SignReward` (training only): rewards clipped to -1, 0 or 1, one scale for every game.
7. gymnasium's `FrameStackObservation`: the last `env.frame_stack` frames, (k, 84, 84) uint8; an
   episode's first observation repeats its first frame k times.

Training envs add two keys to the info of the step that ends a real game (last life lost, or truncated):
`info["game_return"]`, the game's unclipped score over all its lives, and `info["game_length"]`, the
game's 4-frame steps (the wrappers' own no-op and FIRE steps included). In a SAME_STEP vector env they
arrive in `info["final_info"]`, masked by `info["final_info"]["_game_return"]`. Evaluation envs need
neither: their episodes are whole games and their rewards are the score.
"""

from __future__ import annotations

import functools
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium.wrappers import AtariPreprocessing, FrameStackObservation

from common.config import EnvConfig
from common.errors import ConfigError

FRAME_SKIP = 4
SCREEN_SIZE = 84
NOOP = 0


@functools.cache
def _register() -> None:
    """Import the emulator on first use only, so CartPole runs never need the Atari extra."""
    try:
        import ale_py
        import cv2  # noqa: F401  (AtariPreprocessing resizes with it)
    except ImportError as err:
        raise ConfigError(f"env.id: Atari games need the atari extra: pip install -e '.[atari]' ({err})") from None
    gym.register_envs(ale_py)


def make_atari_env(config: EnvConfig, training: bool = True, render_mode: str | None = None) -> gym.Env:
    """One preprocessed game; `training` adds episodic lives, clipped rewards and the game score.
    `render_mode="rgb_array"` renders the full-colour screen (for videos), whatever the observations are."""
    _register()
    kwargs: dict[str, Any] = {
        "frameskip": 1,
        "obs_type": "grayscale",
        "repeat_action_probability": config.sticky_actions,
        "render_mode": render_mode,
    }
    if config.max_episode_steps:
        kwargs["max_num_frames_per_episode"] = FRAME_SKIP * config.max_episode_steps
    try:
        env = gym.make(config.id, **kwargs)
    except gym.error.Error as err:
        raise ConfigError(f"env.id: cannot make {config.id!r}: {err}") from None
    return preprocess(env, config, training)


def preprocess(env: gym.Env, config: EnvConfig, training: bool) -> gym.Env:
    """Wrap an ALE env made with frameskip=1 (possibly already wrapped) in the stack described above."""
    env = AtariPreprocessing(env, noop_max=config.noop_max, frame_skip=FRAME_SKIP, screen_size=SCREEN_SIZE)
    if training:
        env = EpisodicLife(GameScore(env))
    if "FIRE" in env.unwrapped.get_action_meanings():
        env = FireOnReset(env)
    if training:
        env = SignReward(env)
    return FrameStackObservation(env, config.frame_stack, padding_type="reset")


class GameScore(gym.Wrapper):
    """Reports the unclipped return and length of a whole game when it ends (see the module docstring)."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._return, self._length = 0.0, 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        self._return, self._length = 0.0, 0
        return self.env.reset(seed=seed, options=options)

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._return += float(reward)
        self._length += 1
        if terminated or truncated:
            info = {**info, "game_return": self._return, "game_length": self._length}
        return obs, reward, terminated, truncated, info


class EpisodicLife(gym.Wrapper):
    """Ends the episode when a life is lost, but keeps playing the same game (Mnih et al. 2015).

    The learner then never bootstraps across a lost life, which speeds learning in games with lives.
    A reset right after a lost life is one no-op step instead of a new game, so the lives counter
    and the score carry on; any other reset (game over, truncation, a seed) starts a new game.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._lives = 0
        self._life_lost = False

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self.unwrapped.ale.lives()
        self._life_lost = lives < self._lives and not (terminated or truncated)
        self._lives = lives
        return obs, reward, terminated or self._life_lost, truncated, info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        life_lost, self._life_lost = self._life_lost, False
        if life_lost and seed is None:
            obs, _, terminated, truncated, info = self.env.step(NOOP)
            if not (terminated or truncated):
                self._lives = self.unwrapped.ale.lives()
                return obs, info
        obs, info = self.env.reset(seed=seed, options=options)
        self._lives = self.unwrapped.ale.lives()
        return obs, info


class FireOnReset(gym.Wrapper):
    """Presses FIRE to start play: Breakout, for one, shows a still screen until the ball is served.

    With `EpisodicLife` below, every life starts with a reset and so with FIRE. Without it
    (evaluation), a lost life is followed by FIRE within the same step, so a greedy policy that
    never learned to serve (training never needed it to) cannot stall a game until truncation.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self._fire = env.unwrapped.get_action_meanings().index("FIRE")
        self._lives = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        _, info = self.env.reset(seed=seed, options=options)
        obs, _, terminated, truncated, step_info = self.env.step(self._fire)
        info = {**info, **step_info}
        if terminated or truncated:  # the episode ended on the serve itself: start over, unserved
            obs, info = self.env.reset(options=options)
        self._lives = self.unwrapped.ale.lives()
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        lives = self.unwrapped.ale.lives()
        if lives < self._lives and not (terminated or truncated):
            obs, serve_reward, terminated, truncated, info = self.env.step(self._fire)
            reward = float(reward) + float(serve_reward)
        self._lives = self.unwrapped.ale.lives()
        return obs, reward, terminated, truncated, info


class SignReward(gym.RewardWrapper):
    """Clips rewards to their sign, so one learning rate suits scores of 1 and of 1000 (Mnih et al. 2015)."""

    def reward(self, reward: SupportsFloat) -> float:
        return float(np.sign(float(reward)))
