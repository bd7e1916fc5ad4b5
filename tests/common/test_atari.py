"""Atari preprocessing on real ALE games: what training envs feed the learner, what evaluation scores."""

from __future__ import annotations

import dataclasses
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.wrappers import AtariPreprocessing, RecordEpisodeStatistics

from common import atari
from common.config import EnvConfig, NetworkConfig, load_config
from common.envs import env_spec, make_env, make_vector_env
from common.errors import ConfigError
from common.networks import QNetwork

pytest.importorskip("ale_py")
pytest.importorskip("cv2")

BREAKOUT = EnvConfig(id="ALE/Breakout-v5", sticky_actions=0.0)
NOOP = 0


def lives(env: gym.Env) -> int:
    return env.unwrapped.ale.lives()


def test_observations_are_stacked_uint8_frames_that_the_nature_cnn_takes():
    config = EnvConfig(id="ALE/Pong-v5")
    spec = env_spec(config)
    assert (spec.obs_shape, spec.obs_dtype, spec.num_actions) == ((4, 84, 84), np.uint8, 6)
    env = make_env(config)
    obs, _ = env.reset(seed=0)
    env.close()
    net = QNetwork(spec.obs_shape, spec.num_actions, NetworkConfig(torso="nature_cnn", hidden=(512,)))
    q = net(torch.from_numpy(obs[None]))
    assert q.shape == (1, 6) and torch.isfinite(q).all()
    assert env_spec(dataclasses.replace(config, frame_stack=2)).obs_shape == (2, 84, 84)


def test_first_stack_repeats_the_first_frame_then_frames_shift_in():
    env = atari.make_atari_env(BREAKOUT)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 84, 84) and obs.dtype == np.uint8
    assert obs[0].any(), "padded with zeros, not with the first frame"
    assert all(np.array_equal(frame, obs[0]) for frame in obs[1:])
    history = [obs]
    for _ in range(8):
        obs, *_ = env.step(NOOP)
        history.append(obs)
    for before, after in zip(history[:-1], history[1:], strict=True):
        np.testing.assert_array_equal(after[:-1], before[1:])
    assert not np.array_equal(history[-1][-1], history[0][-1]), "the frames never changed"


def test_fire_on_reset_serves_the_ball_in_breakout():
    def still_after_noops(env: gym.Env) -> bool:
        first, _ = env.reset(seed=0)
        frames = [env.step(NOOP)[0] for _ in range(10)]
        return all(np.array_equal(frame[-1], first[-1]) for frame in frames)

    atari.make_atari_env(BREAKOUT).close()  # registers the ALE ids
    unserved = AtariPreprocessing(gym.make(BREAKOUT.id, frameskip=1, repeat_action_probability=0.0))
    unserved_first, _ = unserved.reset(seed=0)
    assert all(np.array_equal(unserved.step(NOOP)[0], unserved_first) for _ in range(10)), "control: still screen"
    assert not still_after_noops(atari.make_atari_env(BREAKOUT, training=True))
    assert not still_after_noops(atari.make_atari_env(BREAKOUT, training=False))


def test_a_lost_life_ends_the_episode_in_training_but_not_the_game():
    train, evaluate = atari.make_atari_env(BREAKOUT, training=True), atari.make_atari_env(BREAKOUT, training=False)
    train.reset(seed=1)
    evaluate.reset(seed=1)
    start_lives = lives(train)
    rng = np.random.default_rng(1)
    for _ in range(500):
        action = int(rng.integers(4))
        _, _, train_done, _, train_info = train.step(action)
        _, _, eval_done, _, _ = evaluate.step(action)
        if train_done:
            break
    assert train_done, "no life lost in 500 random steps"
    assert not eval_done, "evaluation ended its episode on a lost life"
    assert lives(train) == lives(evaluate) == start_lives - 1
    assert "game_return" not in train_info
    frame_before = train.unwrapped.ale.getEpisodeFrameNumber()
    train.reset()
    assert lives(train) == start_lives - 1, "the reset after a lost life started a new game"
    assert train.unwrapped.ale.getEpisodeFrameNumber() > frame_before


def test_evaluation_serves_after_each_lost_life_so_a_still_policy_cannot_stall():
    env = atari.make_atari_env(BREAKOUT, training=False)
    env.reset(seed=0)
    for _ in range(1000):
        _, _, terminated, truncated, _ = env.step(NOOP)
        if terminated or truncated:
            break
    assert terminated and lives(env) == 0, "the game did not end in 1000 no-op steps"


def test_training_clips_rewards_and_reports_the_whole_games_real_score():
    config = EnvConfig(id="ALE/SpaceInvaders-v5", sticky_actions=0.0)
    atari.make_atari_env(config).close()  # registers the ALE ids
    raw = RecordEpisodeStatistics(gym.make(config.id, frameskip=1, obs_type="grayscale", repeat_action_probability=0.0))
    train = atari.preprocess(raw, config, training=True)
    evaluate = atari.make_atari_env(config, training=False)
    train.reset(seed=2)
    evaluate.reset(seed=2)
    rng = np.random.default_rng(2)
    train_rewards, eval_rewards, episodes, same_game = [], [], 1, True
    for _ in range(3000):
        action = int(rng.integers(6))
        _, reward, terminated, truncated, info = train.step(action)
        train_rewards.append(float(reward))
        if same_game:  # until a life is lost, both envs play the very same game
            eval_rewards.append(float(evaluate.step(action)[1]))
        if "game_return" in info:
            break
        assert not truncated
        if terminated:
            train.reset()
            episodes += 1
            same_game = False
    else:
        pytest.fail("no game ended in 3000 random steps")
    assert episodes > 1, "a game of several lives should be several training episodes"
    assert set(train_rewards) <= {-1.0, 0.0, 1.0} and any(train_rewards)
    assert max(eval_rewards) > 1, "evaluation rewards should be the unclipped score"
    np.testing.assert_array_equal(train_rewards[: len(eval_rewards)], np.sign(eval_rewards))
    assert info["game_return"] == pytest.approx(info["episode"]["r"])  # the emulator's own tally
    assert info["game_return"] > sum(train_rewards)
    # 1 serve at the start, then a no-op and a serve after each lost life
    assert info["game_length"] == len(train_rewards) + 1 + 2 * (episodes - 1)


def test_vector_env_resets_finished_games_in_the_same_step():
    config = dataclasses.replace(BREAKOUT, max_episode_steps=30)
    env = make_vector_env(config, 2)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (2, 4, 84, 84) and obs.dtype == np.uint8
    rng = np.random.default_rng(0)
    truncations = 0
    for _ in range(120):
        obs, _, terminated, truncated, info = env.step(rng.integers(4, size=2))
        for i in np.flatnonzero(terminated | truncated):
            assert info["_final_obs"][i] and info["final_obs"][i].shape == (4, 84, 84)
            assert not np.array_equal(info["final_obs"][i], obs[i])
            assert all(np.array_equal(frame, obs[i][0]) for frame in obs[i][1:]), "not a fresh stack"
            if truncated[i]:
                truncations += 1
                assert info["final_info"]["_game_return"][i]
                # the frame limit (4 x 30) counts the 1..30 no-op frames that start a game too
                assert 22 < info["final_info"]["game_length"][i] <= 30
    env.close()
    assert truncations >= 2, "max_episode_steps never cut a game short"


def test_bad_ids_settings_and_a_missing_extra_are_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="env.id"):
        make_env(EnvConfig(id="ALE/NoSuchGame-v5"))
    with pytest.raises(ConfigError, match="env.id"):
        make_vector_env(EnvConfig(id="ALE/NoSuchGame-v5"), 2)
    for bad in ({"frame_stack": 0}, {"noop_max": -1}, {"sticky_actions": 1.0}):
        with pytest.raises(ConfigError, match=f"env.{next(iter(bad))}"):
            EnvConfig(id="ALE/Pong-v5", **bad)
    monkeypatch.setitem(sys.modules, "ale_py", None)
    atari._register.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r"pip install -e '\.\[atari\]'"):
            make_env(BREAKOUT)
    finally:
        atari._register.cache_clear()


def test_other_envs_are_made_as_before():
    config = EnvConfig()
    assert not config.atari and BREAKOUT.atari
    env = make_vector_env(config, 3, training=False)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (3, 4) and env.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    env.close()
    assert make_env(config).spec.id == "CartPole-v1"


@pytest.mark.parametrize("preset", ["pong", "breakout"])
def test_atari_presets_build(preset):
    config = load_config(preset)
    assert config.env.atari and config.network.torso == "nature_cnn" and config.env.sticky_actions == 0.0
    spec = env_spec(config.env)
    QNetwork(spec.obs_shape, spec.num_actions, config.network)
