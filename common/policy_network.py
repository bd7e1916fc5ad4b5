"""The Q-network copy that actors and the evaluator act with: numpy for MLPs, torch for the Nature CNN.

An actor only ever runs the forward pass of weights it received, a few rows at a time. For an MLP that
needs no torch at all: the numpy network below keeps its own parameters under QNetwork's names and
shapes, so any published weights load into it, and an actor process never imports torch (about a
second of CPU per process at start, which on a small machine full of actors is most of the start-up).
At 4 to 16 rows numpy is also several times faster than torch, whose fixed cost per operator dominates
(about 0.35 ms for 16 CartPole envs, against about 0.05 ms here). Convolutional networks keep torch.

Parameters start at zero: an actor loads the learner's weights before its first step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from common.config import NetworkConfig


class PolicyNetwork(Protocol):
    def __call__(self, obs: np.ndarray) -> np.ndarray:
        """Q-values, (rows, actions) float32, of a batch of observations."""

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Copy in published weights (QNetwork state_dict names); a mismatch raises ValueError."""


def policy_network(
    obs_shape: Sequence[int], num_actions: int, config: NetworkConfig, *, seed: int = 0
) -> PolicyNetwork:
    if config.torso == "mlp":
        return NumpyMLPQNetwork(int(np.prod(obs_shape)), config.hidden, num_actions, dueling=config.dueling)
    return TorchQNetwork(obs_shape, num_actions, config, seed=seed)


def check_weights(expected: Mapping[str, tuple[int, ...]], arrays: Mapping[str, np.ndarray]) -> None:
    """Raise ValueError unless `arrays` has exactly the names of `expected`, each with its shape."""
    if set(arrays) != set(expected):
        missing, extra = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        raise ValueError(f"weights do not fit this network: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, shape in expected.items():
        if tuple(arrays[name].shape) != tuple(shape):
            raise ValueError(f"weights do not fit this network: {name} {arrays[name].shape} vs {tuple(shape)}")


class NumpyMLPQNetwork:
    """QNetwork with an MLP torso (and optional dueling head), forward pass only, in numpy.

    Parameter names and shapes are those of `QNetwork.state_dict()` (a test keeps them in step), so
    published weights load unchanged. Activations are kept transposed (features x rows): for a few
    rows, weight @ x runs about twice as fast in OpenBLAS as x @ weight.T. The result is returned as a
    (rows, actions) transposed view.
    """

    def __init__(self, input_size: int, hidden: Sequence[int], num_actions: int, *, dueling: bool) -> None:
        shapes: dict[str, tuple[int, ...]] = {}
        width = input_size
        for i, out in enumerate(hidden):  # nn.Sequential(Linear, ReLU, Linear, ReLU, ...): linears at 0, 2, ...
            shapes[f"torso.layers.{2 * i}.weight"] = (out, width)
            shapes[f"torso.layers.{2 * i}.bias"] = (out,)
            width = out
        heads = {"value": 1, "advantage": num_actions} if dueling else {"q": num_actions}
        for name, out in heads.items():
            shapes[f"{name}.weight"] = (out, width)
            shapes[f"{name}.bias"] = (out,)
        self.shapes = shapes
        self.params = {name: np.zeros(shape, np.float32) for name, shape in shapes.items()}
        self.dueling = dueling
        self._torso = [self._layer(f"torso.layers.{2 * i}") for i in range(len(hidden))]
        self._heads = [self._layer(name) for name in heads]

    def _layer(self, prefix: str) -> tuple[np.ndarray, np.ndarray]:
        """(weight, bias as a column): views of the parameters, for activations laid out features x rows."""
        return self.params[f"{prefix}.weight"], self.params[f"{prefix}.bias"][:, None]

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        check_weights(self.shapes, arrays)
        for name, param in self.params.items():
            np.copyto(param, arrays[name], casting="same_kind")

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float32).reshape(len(obs), -1).T
        for weight, bias in self._torso:
            x = weight @ x
            x += bias
            np.maximum(x, 0.0, out=x)
        if not self.dueling:
            ((weight, bias),) = self._heads
            q = weight @ x
            q += bias
            return q.T
        (vw, vb), (aw, ab) = self._heads
        advantage = aw @ x
        advantage += ab
        mean = advantage.sum(axis=0, keepdims=True)  # sum, then divide: what mean() does, minus its overhead
        mean /= advantage.shape[0]
        q = vw @ x
        q += vb
        q = q + advantage
        q -= mean
        return q.T


class TorchQNetwork:
    """A QNetwork evaluated with torch (one thread), for torsos numpy would run slowly (convolutions)."""

    def __init__(self, obs_shape: Sequence[int], num_actions: int, config: NetworkConfig, *, seed: int = 0) -> None:
        import torch

        from common.networks import QNetwork

        torch.set_num_threads(1)
        torch.manual_seed(seed)
        self._torch = torch
        self.net = QNetwork(obs_shape, num_actions, config).eval()

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        from common.networks import load_numpy_weights

        load_numpy_weights(self.net, arrays)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        with self._torch.no_grad():
            return self.net(self._torch.from_numpy(np.asarray(obs))).numpy()
