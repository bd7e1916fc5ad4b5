"""On Atari the training return an actor reports is the whole game's real score, not a life's clipped sum."""

from __future__ import annotations

import functools
import threading

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector import AutoresetMode
from gymnasium.wrappers import RecordEpisodeStatistics

from actor.actor import Actor
from common.atari import make_atari_env, preprocess
from common.config import EnvConfig, load_config
from common.wire import Encoder

pytest.importorskip("ale_py")
pytest.importorskip("cv2")

GAMES = 3


class StatsLink:
    """What Actor uses of a LearnerLink: fixed (never loaded) weights, and the actor_stats it reports kept."""

    learner_host = "127.0.0.1"
    curve = None
    version = 1
    stop_reason = None

    def __init__(self) -> None:
        self.encode = Encoder("test-actor")
        self.returns: list[float] = []
        self.lengths: list[int] = []

    def newest_weights(self, load=None, attach=None):
        return None

    def weights_whole(self) -> bool:
        return True

    def send(self, kind: str, meta: dict, arrays: dict) -> bool:
        if kind == "actor_stats":
            self.returns.extend(arrays["episode_returns"].tolist())
            self.lengths.extend(arrays["episode_lengths"].tolist())
        return True  # sent: the actor starts its next report afresh


class NullPush:
    """Stands in for the PUSH socket to replay: always writable, drops what is sent."""

    def poll(self, timeout: int, flags: int) -> bool:
        return True

    def send(self, frame, flags: int = 0, copy: bool = True) -> None:
        pass

    def send_multipart(self, frames: list, copy: bool = True) -> None:
        pass

    def close(self, linger: int = 0) -> None:
        pass


def recorded_game(config: EnvConfig) -> gym.Env:
    """The actor's training env with gymnasium's episode recorder on the bare emulator, below every wrapper:
    its episodes are whole games and its return is the sum of the game's raw rewards."""
    make_atari_env(config).close()  # registers the ALE ids
    raw = gym.make(config.id, frameskip=1, obs_type="grayscale", repeat_action_probability=config.sticky_actions)
    return preprocess(RecordEpisodeStatistics(raw), config, training=True)


def test_atari_training_return_is_the_sum_of_the_games_raw_rewards() -> None:
    config = load_config("breakout", ["env.num_envs=2", "network.hidden=[32]", "actor.send_size=16"])
    actor = Actor(StatsLink(), config, actor_index=0)
    actor.push.close(linger=0)
    actor.push = NullPush()
    actor.env.close()
    actor.env = gym.vector.SyncVectorEnv(
        [functools.partial(recorded_game, config.env)] * 2, autoreset_mode=AutoresetMode.SAME_STEP
    )
    actor.epsilon = 1.0  # random play: games end within a few hundred steps
    games: list[tuple[float, int]] = []
    training_episodes, clipped = 0, set()
    stop = threading.Event()
    step = actor.env.step

    def watched_step(actions):
        nonlocal training_episodes
        out = step(actions)
        _, rewards, terminated, truncated, info = out
        clipped.update(rewards.tolist())
        training_episodes += int(np.count_nonzero(terminated | truncated))
        final = info.get("final_info", {})
        for i in np.flatnonzero(final.get("_episode", ())):
            games.append((float(final["episode"]["r"][i]), int(final["game_length"][i])))
        if len(games) >= GAMES:
            stop.set()
        return out

    actor.env.step = watched_step
    try:
        actor.run(stop)
    finally:
        actor.close()
    assert len(games) >= GAMES
    assert training_episodes > len(games), "lost lives should have ended training episodes within the games"
    assert clipped <= {-1.0, 0.0, 1.0}
    assert actor.link.returns == pytest.approx([score for score, _ in games])
    assert actor.link.lengths == [length for _, length in games]
    assert any(score > 0 for score, _ in games), "random play scored nothing: the comparison proves little"


def test_other_envs_report_the_sum_of_their_episodes_rewards() -> None:
    config = load_config("cartpole", ["env.num_envs=2", "network.hidden=[8]"])
    actor = Actor(StatsLink(), config, actor_index=0)
    actor.push.close(linger=0)
    actor.push = NullPush()
    episodes: list[float] = []
    running = np.zeros(2)
    stop = threading.Event()
    step = actor.env.step

    def watched_step(actions):
        out = step(actions)
        _, rewards, terminated, truncated, _ = out
        running[:] += rewards
        done = terminated | truncated
        episodes.extend(running[done].tolist())
        running[done] = 0
        if len(episodes) >= 5:
            stop.set()
        return out

    actor.env.step = watched_step
    try:
        actor.run(stop)
    finally:
        actor.close()
    assert actor.link.returns == episodes and len(episodes) >= 5
