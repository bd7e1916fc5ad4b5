"""The evaluator: greedy episodes on fresh environments with the newest weights; never writes to replay.

Each evaluation runs `eval.episodes` environments side by side, one episode each, and reports the
returns to the learner, which decides whether the run is solved. It evaluates each weight version at
most once, so a slow learner cannot make one lucky network count several times in a row.
"""

from __future__ import annotations

import logging
import threading
import time

import numpy as np

from actor.exploration import epsilon_greedy
from actor.link import LearnerLink
from common.config import RunConfig
from common.envs import env_spec, make_vector_env
from common.policy_network import policy_network
from common.process import derive_seed

log = logging.getLogger(__name__)


class Evaluator:
    def __init__(self, link: LearnerLink, config: RunConfig) -> None:
        self.link = link
        self.config = config
        spec = env_spec(config.env)
        self.q = policy_network(spec.obs_shape, spec.num_actions, config.network, seed=derive_seed(config.seed, 3))
        self.rng = np.random.default_rng(derive_seed(config.seed, 4))
        self.evaluations = 0

    def evaluate(self, stop: threading.Event) -> tuple[np.ndarray, np.ndarray]:
        """Returns and lengths of one episode in each of `eval.episodes` fresh environments."""
        episodes = self.config.eval.episodes
        env = make_vector_env(self.config.env, episodes, training=False)
        try:
            obs, _ = env.reset(seed=derive_seed(self.config.seed, 5, self.evaluations) % 2**31)
            returns = np.zeros(episodes)
            lengths = np.zeros(episodes, dtype=np.int64)
            running = np.ones(episodes, dtype=bool)
            while running.any() and not stop.is_set():
                actions = epsilon_greedy(self.q(obs), self.config.eval.epsilon, self.rng)
                obs, rewards, terminated, truncated, _ = env.step(actions)
                returns += rewards * running
                lengths += running
                running &= ~(terminated | truncated)
        finally:
            env.close()
        self.evaluations += 1
        return returns.astype(np.float32), lengths

    def run(self, stop: threading.Event) -> None:
        interval = self.config.eval.interval_s
        evaluated_version = -1
        next_start = time.monotonic()
        while not stop.is_set() and self.link.stop_reason is None:
            self.link.newest_weights(self.q.load)
            if time.monotonic() < next_start or self.link.version == evaluated_version:
                time.sleep(0.05)
                continue
            next_start = time.monotonic() + interval
            evaluated_version = self.link.version
            returns, lengths = self.evaluate(stop)
            if stop.is_set():
                break
            self.link.send(
                "eval_result", {"weight_version": evaluated_version}, {"returns": returns, "lengths": lengths}
            )
            log.info("weights v%d: greedy return %.1f +- %.1f", evaluated_version, returns.mean(), returns.std())
        log.info("evaluator stopping (%s) after %d evaluations", self.link.stop_reason or "signal", self.evaluations)

    def close(self) -> None:
        """Nothing held between evaluations: each one makes and closes its own environments."""
