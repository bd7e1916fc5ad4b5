"""Environment construction from a gymnasium id, the same way in actors, evaluator and learner.

`ALE/...` ids get the DeepMind preprocessing of common/atari.py; `training=False` (the evaluator)
keeps whole games and the real score. Every other id is made as registered, whatever `training` is.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from common.atari import make_atari_env
from common.config import EnvConfig
from common.errors import ConfigError


@dataclass(frozen=True)
class EnvSpec:
    """What the network and the replay storage need to know about an environment."""

    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int


def _make_kwargs(config: EnvConfig) -> dict:
    return {"max_episode_steps": config.max_episode_steps} if config.max_episode_steps else {}


def env_spec(config: EnvConfig) -> EnvSpec:
    env = make_env(config)
    try:
        obs_space, action_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ConfigError(f"env.id: {config.id} has a {type(action_space).__name__} action space; DQN needs Discrete")
    if not isinstance(obs_space, gym.spaces.Box):
        raise ConfigError(f"env.id: {config.id} has a {type(obs_space).__name__} observation space; need a Box")
    return EnvSpec(tuple(obs_space.shape), np.dtype(obs_space.dtype), int(action_space.n))


def make_env(config: EnvConfig, training: bool = True, render_mode: str | None = None) -> gym.Env:
    if config.atari:
        return make_atari_env(config, training, render_mode)
    try:
        return gym.make(config.id, render_mode=render_mode, **_make_kwargs(config))
    except gym.error.Error as err:
        raise ConfigError(f"env.id: cannot make {config.id!r}: {err}") from None


def make_vector_env(config: EnvConfig, num_envs: int, training: bool = True) -> gym.vector.VectorEnv:
    """A synchronous vector env whose finished sub-envs reset in the same step.

    SAME_STEP autoreset hands back the episode's final observation in `info["final_obs"]` and the new
    episode's first observation in the returned batch, so no step is wasted on a reset and the n-step
    builder never sees a transition that spans two episodes.
    """
    if config.atari:
        factories = [functools.partial(make_atari_env, config, training)] * num_envs
        return gym.vector.SyncVectorEnv(factories, autoreset_mode=AutoresetMode.SAME_STEP)
    try:
        return gym.make_vec(
            config.id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            **_make_kwargs(config),
        )
    except gym.error.Error as err:
        raise ConfigError(f"env.id: cannot make {config.id!r}: {err}") from None
