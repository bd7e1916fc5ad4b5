"""Environment construction from a gymnasium id, the same way in actors, evaluator and learner.

`ALE/...` ids get the DeepMind preprocessing of common/atari.py; `training=False` (the evaluator)
keeps whole games and the real score. `MinAtar/...` ids (the optional `minatar` extra) get their 10x10
grids channels first as uint8 (see `ChannelsFirst`). Every other id is made as registered, whatever
`training` is. `check_env_id` tells, before any process starts, whether an id can be made here and, if
not, which extra installs what it needs.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from common.atari import make_atari_env
from common.config import EnvConfig
from common.errors import ConfigError

MINATAR_PREFIX = "MinAtar/"
# Packages behind env ids, by the module their entry point lives in: (import names, extra that installs them).
EXTRAS = {
    "gymnasium.envs.box2d": (("Box2D", "pygame"), "box2d"),
    "minatar": (("minatar",), "minatar"),
    "ale_py": (("ale_py", "cv2"), "atari"),
}


@dataclass(frozen=True)
class EnvSpec:
    """What the network and the replay storage need to know about an environment."""

    obs_shape: tuple[int, ...]
    obs_dtype: np.dtype
    num_actions: int
    obs_low: np.ndarray | None = field(default=None, compare=False)
    """the observation space's bounds (obs_shape, float64; +-inf where unbounded): replay refuses
    observations outside them. None: no bounds known"""
    obs_high: np.ndarray | None = field(default=None, compare=False)


def _make_kwargs(config: EnvConfig) -> dict:
    return {"max_episode_steps": config.max_episode_steps} if config.max_episode_steps else {}


def _missing_extra(entry_point: str) -> str | None:
    """The `pip install` line for an entry point whose packages are not importable, else None."""
    for module, (imports, extra) in EXTRAS.items():
        if entry_point == module or entry_point.startswith((module + ".", module + ":")):
            for name in imports:
                try:
                    importlib.import_module(name)
                except ImportError:
                    return f"{extra} extra: pip install -e '.[{extra}]' torch==2.13.0 (no module {name!r})"
    return None


@functools.cache
def _register_minatar() -> None:
    """MinAtar registers its ids through a plugin hook that gymnasium 1.x no longer calls: call it here."""
    missing = _missing_extra("minatar")
    if missing:
        raise ConfigError(f"env.id: MinAtar games need the {missing}")
    from minatar.gym import register_envs

    if "MinAtar/Breakout-v1" not in gym.registry:
        register_envs()


def check_env_id(env_id: str) -> str | None:
    """Why `env_id` cannot be made on this machine (one line naming the missing extra), or None if it can.

    Cheap enough to run before a launch: it looks the id up, imports what its entry point needs and
    makes (then closes) one env, so a missing package, a misspelt id or a continuous action space stops
    the launch, not the learner after every process has started.
    """
    try:
        if env_id.startswith("ALE/"):
            missing = _missing_extra("ale_py")
        elif env_id.startswith(MINATAR_PREFIX):
            missing = _missing_extra("minatar")
        else:
            spec = gym.spec(env_id)
            entry = spec.entry_point if isinstance(spec.entry_point, str) else ""
            missing = _missing_extra(entry)
        if missing:
            return f"env.id: {env_id} needs the {missing}"
        env_spec(EnvConfig(id=env_id))
    except ConfigError as err:
        return str(err)
    except gym.error.Error as err:
        return f"env.id: cannot make {env_id!r}: {err}"
    return None


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
    low, high = (np.broadcast_to(np.asarray(b, np.float64), obs_space.shape) for b in (obs_space.low, obs_space.high))
    return EnvSpec(tuple(obs_space.shape), np.dtype(obs_space.dtype), int(action_space.n), low, high)


def make_env(config: EnvConfig, training: bool = True, render_mode: str | None = None) -> gym.Env:
    if config.atari:
        return make_atari_env(config, training, render_mode)
    if config.id.startswith(MINATAR_PREFIX):
        return make_minatar_env(config, render_mode)
    with _env_errors(config.id):
        return gym.make(config.id, render_mode=render_mode, **_make_kwargs(config))


@contextlib.contextmanager
def _env_errors(env_id: str) -> Iterator[None]:
    """gymnasium's errors as one ConfigError line; a missing package names the extra that installs it."""
    try:
        yield
    except gym.error.DependencyNotInstalled as err:
        spec = gym.registry.get(env_id)
        missing = _missing_extra(spec.entry_point) if spec and isinstance(spec.entry_point, str) else None
        raise ConfigError(f"env.id: {env_id} needs the {missing}" if missing else f"env.id: {env_id}: {err}") from None
    except gym.error.Error as err:
        raise ConfigError(f"env.id: cannot make {env_id!r}: {err}") from None


def make_minatar_env(config: EnvConfig, render_mode: str | None = None) -> gym.Env:
    """A MinAtar game as its reference DQN saw it (sticky actions 0.1, difficulty ramping), channels first."""
    _register_minatar()
    with _env_errors(config.id):
        env = gym.make(config.id, render_mode=render_mode, **_make_kwargs(config))
    return ChannelsFirst(env)


class ChannelsFirst(gym.ObservationWrapper):
    """MinAtar's (10, 10, C) bool grids as (C, 10, 10) uint8: the layout torch's Conv2d takes.

    uint8 rather than bool: one byte a cell either way in replay (a quarter of float32), and uint8 is
    what every conv path and the numpy actor network read without a special case. Transposed here,
    once per step on 400-1000 bytes, rather than in every forward pass of the learner's batches.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        height, width, channels = env.observation_space.shape
        self.observation_space = gym.spaces.Box(0, 1, (channels, height, width), np.uint8)

    def observation(self, observation: Any) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(observation, dtype=np.uint8).transpose(2, 0, 1))


def make_vector_env(config: EnvConfig, num_envs: int, training: bool = True) -> gym.vector.VectorEnv:
    """A synchronous vector env whose finished sub-envs reset in the same step.

    SAME_STEP autoreset hands back the episode's final observation in `info["final_obs"]` and the new
    episode's first observation in the returned batch, so no step is wasted on a reset and the n-step
    builder never sees a transition that spans two episodes.
    """
    if config.atari or config.id.startswith(MINATAR_PREFIX):
        factories = [functools.partial(make_env, config, training)] * num_envs
        return gym.vector.SyncVectorEnv(factories, autoreset_mode=AutoresetMode.SAME_STEP)
    with _env_errors(config.id):
        return gym.make_vec(
            config.id,
            num_envs=num_envs,
            vectorization_mode="sync",
            vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP},
            **_make_kwargs(config),
        )


class EpisodeScores:
    """The return and length to report for each finished episode of a vector env's sub-envs.

    For most envs that is the sum of the rewards the learner sees. Atari training envs end an episode at
    every lost life and clip rewards, so their episodes are not games and their sum is not a score; for
    them the score is the unclipped return of the whole game that `GameScore` (common/atari.py) puts in
    the final info of the step that ends it, and a lost life reports nothing.
    """

    def __init__(self, config: EnvConfig, num_envs: int) -> None:
        self.game_scores = config.atari
        self._return = np.zeros(num_envs)
        self._length = np.zeros(num_envs, dtype=np.int64)

    def step(self, rewards: np.ndarray, done: np.ndarray, info: dict) -> tuple[list[float], list[int]]:
        """Add one vector step; return the (returns, lengths) of the episodes (games) it finished."""
        self._return += rewards
        self._length += 1
        if not np.count_nonzero(done):
            return [], []
        returns, lengths = self._return[done].tolist(), self._length[done].tolist()
        self._return[done] = 0
        self._length[done] = 0
        if not self.game_scores:
            return returns, lengths
        final = info.get("final_info", {})
        ended = np.asarray(final.get("_game_return", ()), dtype=bool)
        if not ended.any():
            return [], []
        return np.asarray(final["game_return"])[ended].tolist(), np.asarray(final["game_length"])[ended].tolist()
