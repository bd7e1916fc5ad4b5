"""Every preset loads, makes its env, and takes real learner updates on transitions from that env."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from actor.nstep import NStepBuilder, true_next_obs
from common.config import PRESETS_DIR, load_config
from common.envs import check_env_id, env_spec, make_vector_env
from common.networks import parameter_views
from common.policy_network import policy_network
from common.sockets import free_port_base
from learner.learner import Learner
from learner.replay_client import Batch

PRESETS = sorted(path.stem for path in PRESETS_DIR.glob("*.toml"))
STOP_RETURNS = {"acrobot": -100.0, "mountaincar": -110.0, "lunarlander": 200.0, "cartpole": 475.0}
UPDATES = 3
ENVS = 2


def test_every_task_has_a_preset() -> None:
    assert set(STOP_RETURNS) <= set(PRESETS)
    games = ("breakout", "space-invaders", "asterix", "freeway", "seaquest")
    assert {f"minatar-{game}" for game in games} <= set(PRESETS)


def env_batch(config, spec, rows: int, seed: int) -> Batch:
    """`rows` n-step transitions of random play in the preset's own env, as replay would serve them."""
    env = make_vector_env(config.env, ENVS)
    lc = config.learner
    builder = NStepBuilder(ENVS, lc.n_step, lc.gamma, spec.obs_shape, spec.obs_dtype)
    rng = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    parts = []
    while sum(len(p) for p in parts) < rows:
        actions = rng.integers(spec.num_actions, size=ENVS)
        next_obs, rewards, terminated, truncated, info = env.step(actions)
        bootstrap = true_next_obs(next_obs, terminated, truncated, info)
        made = builder.add(obs, actions, rewards, terminated, truncated, bootstrap)
        if made is not None and len(made):
            parts.append(made)
        obs = next_obs
    env.close()

    def column(name: str) -> torch.Tensor:
        return torch.from_numpy(np.concatenate([getattr(p, name) for p in parts])[:rows].copy())

    return Batch(
        obs=column("obs"),
        action=column("action"),
        reward=column("reward"),
        discount=column("discount"),
        next_obs=column("next_obs"),
        weight=torch.ones(rows),
        index=np.arange(rows, dtype=np.int64),
        id=np.arange(rows, dtype=np.int64),
    )


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_loads_and_takes_real_updates(preset: str, tmp_path: Path) -> None:
    config = load_config(preset, ["learner.device=cpu"])
    config = dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))
    assert config.name == preset
    assert check_env_id(config.env.id) is None
    if preset in STOP_RETURNS:
        assert config.stop.eval_return == STOP_RETURNS[preset]
    spec = env_spec(config.env)
    batch = env_batch(config, spec, config.learner.batch_size, seed=3)
    assert batch.obs.dtype == torch.from_numpy(np.zeros(1, spec.obs_dtype)).dtype  # stored as the env makes them
    learner = Learner(config, spec, tmp_path)
    try:
        before = {name: t.clone() for name, t in learner.online.state_dict().items()}
        for _ in range(UPDATES):
            loss, q_mean = learner.train_step(batch)
            assert torch.isfinite(loss) and torch.isfinite(q_mean)
        assert learner.updates == UPDATES
        after = learner.online.state_dict()
        assert any(not torch.equal(before[name], after[name]) for name in before), "the updates changed nothing"
        # What actors act with loads the learner's weights and computes its Q-values.
        acting = policy_network(spec.obs_shape, spec.num_actions, config.network)
        acting.load(parameter_views(learner.online))
        obs = batch.obs[:8]
        with torch.no_grad():
            expected = learner.online(obs).numpy()
        np.testing.assert_allclose(acting(obs.numpy()), expected, rtol=1e-4, atol=1e-5)
    finally:
        for sock in (learner.control.router, learner.control.pub):
            sock.close(linger=0)
        learner.ctx.destroy(linger=0)
