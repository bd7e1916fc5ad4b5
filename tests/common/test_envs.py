"""Envs beyond CartPole: ids checked before a launch, MinAtar grids and the networks that read them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import EnvConfig, NetworkConfig
from common.envs import check_env_id, env_spec, make_env, make_vector_env
from common.errors import ConfigError
from common.networks import QNetwork, weights_to_numpy
from common.policy_network import NumpyMinAtarQNetwork, policy_network

ROOT = Path(__file__).resolve().parents[2]
MINATAR_GAMES = {"Breakout": 4, "SpaceInvaders": 6, "Asterix": 4, "Freeway": 7, "Seaquest": 10}


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Acrobot-v1", "MountainCar-v0", "LunarLander-v3"])
def test_the_presets_envs_can_be_made_here(env_id: str) -> None:
    assert check_env_id(env_id) is None


@pytest.mark.parametrize(
    ("env_id", "words"),
    [
        ("NoSuchEnv-v0", "cannot make 'NoSuchEnv-v0'"),
        ("ALE/NoSuchGame-v5", "cannot make"),
        ("MinAtar/NoSuchGame-v1", "cannot make"),
        ("Pendulum-v1", "DQN needs Discrete"),
    ],
)
def test_ids_that_cannot_be_trained_say_why_in_one_line(env_id: str, words: str) -> None:
    problem = check_env_id(env_id)
    assert problem is not None and problem.startswith("env.id: ") and words in problem and "\n" not in problem


@pytest.mark.parametrize(
    ("env_id", "module", "extra"),
    [
        ("LunarLander-v3", "Box2D", "box2d"),
        ("MinAtar/Breakout-v1", "minatar", "minatar"),
        ("ALE/Pong-v5", "ale_py", "atari"),
    ],
)
def test_a_missing_package_names_the_extra_that_installs_it(monkeypatch, env_id: str, module: str, extra: str) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what an import of an uninstalled package does
    problem = check_env_id(env_id)
    assert problem is not None and f"needs the {extra} extra: pip install -e '.[{extra}]' torch==2.13.0" in problem


def test_the_launch_check_refuses_an_env_whose_extra_is_missing_before_anything_starts() -> None:
    """`python -m common.check_config`, which the launcher runs first, exits 2 with one `error:` line."""
    code = (
        "import runpy, sys; sys.modules['Box2D'] = None; "
        "sys.argv = ['check_config', '--preset', 'cartpole', 'env.id=LunarLander-v3']; "
        "runpy.run_module('common.check_config', run_name='__main__')"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "box2d extra" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_missing_box2d_is_a_config_error_where_envs_are_made(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "Box2D", None)
    monkeypatch.delitem(sys.modules, "gymnasium.envs.box2d", raising=False)
    monkeypatch.delitem(sys.modules, "gymnasium.envs.box2d.lunar_lander", raising=False)
    with pytest.raises(ConfigError, match=r"box2d extra"):
        make_env(EnvConfig(id="LunarLander-v3"))


@pytest.mark.parametrize(("game", "channels"), MINATAR_GAMES.items())
def test_minatar_observations_are_channels_first_uint8_grids(game: str, channels: int) -> None:
    config = EnvConfig(id=f"MinAtar/{game}-v1")
    spec = env_spec(config)
    assert spec.obs_shape == (channels, 10, 10) and spec.obs_dtype == np.uint8
    env = make_env(config)
    obs, _ = env.reset(seed=0)
    raw = env.unwrapped.game.state()  # the game's own (10, 10, C) bool grid
    assert raw.shape == (10, 10, channels) and raw.dtype == bool
    np.testing.assert_array_equal(obs, raw.transpose(2, 0, 1))
    for _ in range(20):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert obs.shape == spec.obs_shape and obs.dtype == np.uint8 and set(np.unique(obs)) <= {0, 1}
        np.testing.assert_array_equal(obs, env.unwrapped.game.state().transpose(2, 0, 1))
        if terminated or truncated:
            obs, _ = env.reset()
    env.close()


def test_minatar_vector_env_resets_in_the_same_step_and_both_networks_agree_on_its_grids() -> None:
    config = EnvConfig(id="MinAtar/SpaceInvaders-v1", max_episode_steps=15)
    spec = env_spec(config)
    env = make_vector_env(config, 4)
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    seen, ends = [obs], 0
    for _ in range(40):
        obs, _, terminated, truncated, info = env.step(rng.integers(spec.num_actions, size=4))
        seen.append(obs)
        for i in np.flatnonzero(terminated | truncated):
            ends += 1
            assert info["final_obs"][i].shape == spec.obs_shape and info["final_obs"][i].dtype == np.uint8
    env.close()
    assert ends >= 4, "max_episode_steps never ended an episode"
    grids = np.concatenate(seen)
    for dueling in (False, True):
        network = NetworkConfig(torso="minatar_cnn", hidden=(128,), dueling=dueling)
        torch.manual_seed(1)
        net = QNetwork(spec.obs_shape, spec.num_actions, network).eval()
        policy = policy_network(spec.obs_shape, spec.num_actions, network)
        assert isinstance(policy, NumpyMinAtarQNetwork)
        assert policy.shapes == {name: tuple(t.shape) for name, t in net.state_dict().items()}
        policy.load(weights_to_numpy(net))
        with torch.no_grad():
            expected = net(torch.from_numpy(grids)).numpy()
        assert expected.shape == (len(grids), spec.num_actions) and np.ptp(expected) > 0
        np.testing.assert_allclose(policy(grids), expected, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(policy(grids[:3]), expected[:3], rtol=1e-5, atol=1e-6)


def test_minatar_torso_is_the_reference_network() -> None:
    net = QNetwork((4, 10, 10), 3, NetworkConfig(torso="minatar_cnn", hidden=(128,), dueling=False))
    conv = net.torso.conv
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride) == (4, 16, (3, 3), (1, 1))
    assert net.torso.dense[0].in_features == 16 * 8 * 8 and net.torso.dense[0].out_features == 128
    # conv 4*9*16+16, dense 1024*128+128, output 128*3+3: the reference's parameter count
    assert sum(p.numel() for p in net.parameters()) == 592 + 131200 + 387
    with pytest.raises(ValueError, match="channels, height, width"):
        QNetwork((400,), 3, NetworkConfig(torso="minatar_cnn", hidden=(128,)))


def test_minatar_actors_never_import_torch() -> None:
    code = (
        "import sys\n"
        "from common.config import NetworkConfig\n"
        "from common.policy_network import policy_network\n"
        "policy_network((4, 10, 10), 3, NetworkConfig(torso='minatar_cnn', hidden=(128,)))\n"
        "sys.exit('torch' in sys.modules)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=60).returncode == 0
