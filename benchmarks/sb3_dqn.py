"""Stable-Baselines3 DQN on one env, evaluated like distdqn's evaluator: the peer that learning_suite.py times.

    python benchmarks/sb3_dqn.py --env Acrobot-v1 --seed 3 --timesteps 100000 --eval-every 2000 \
        --kwargs '{"learning_rate": 6.3e-4, "policy_kwargs": {"net_arch": [256, 256]}}'

Prints `eval steps=N return R` after every `--eval-every` steps: the mean of 10 greedy episodes on a separate
env, made the way distdqn's evaluator makes it (common/envs.py). `--minatar` puts MinAtar's reference
network (one 3x3 conv of 16 channels, a dense layer of 128, a linear Q head) under SB3's DQN, and
`--rmsprop` its reference optimizer (centered RMSprop, alpha 0.95, eps 0.01).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from stable_baselines3 import DQN
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

from common.config import EnvConfig
from common.envs import make_env
from common.networks import MinAtarTorso

EVAL_EPISODES = 10


class MinAtarFeatures(BaseFeaturesExtractor):
    """distdqn's MinAtarTorso (the reference's conv and dense layer) as SB3's features extractor."""

    def __init__(self, observation_space, features_dim: int = 128) -> None:
        super().__init__(observation_space, features_dim)
        self.torso = MinAtarTorso(observation_space.shape, features_dim)

    def forward(self, observations: torch.Tensor) -> torch.Tensor:
        return self.torso(observations)


class Evaluate(BaseCallback):
    def __init__(self, env, every: int) -> None:
        super().__init__()
        self.eval_env, self.every = env, every

    def _on_step(self) -> bool:
        if self.num_timesteps % self.every == 0:
            mean, _ = evaluate_policy(self.model, self.eval_env, n_eval_episodes=EVAL_EPISODES, deterministic=True)
            print(f"eval steps={self.num_timesteps} return {mean:.1f}", flush=True)
        return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--timesteps", type=int, required=True)
    parser.add_argument("--eval-every", type=int, default=2000)
    parser.add_argument("--kwargs", default="{}", help="DQN keyword arguments as JSON (the rl-zoo settings)")
    parser.add_argument("--minatar", action="store_true", help="MinAtar's reference network")
    parser.add_argument("--rmsprop", action="store_true", help="MinAtar's reference optimizer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    kwargs = json.loads(args.kwargs)
    policy_kwargs = kwargs.pop("policy_kwargs", {})
    if args.minatar:
        policy_kwargs.update(features_extractor_class=MinAtarFeatures, net_arch=[])
    if args.rmsprop:
        policy_kwargs.update(
            optimizer_class=torch.optim.RMSprop, optimizer_kwargs={"alpha": 0.95, "eps": 0.01, "centered": True}
        )
    config = EnvConfig(id=args.env)
    env, eval_env = make_env(config), make_env(config, training=False)
    model = DQN("MlpPolicy", env, seed=args.seed, verbose=0, policy_kwargs=policy_kwargs, **kwargs)
    model.learn(total_timesteps=args.timesteps, callback=Evaluate(eval_env, args.eval_every))
    return 0


if __name__ == "__main__":
    sys.exit(main())
