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
    published weights load unchanged. At 16 rows each numpy call costs more than its arithmetic, so
    `load` rearranges the weights for the fewest calls per forward pass:

    - activations are kept transposed (features x rows): for a few rows, weight @ x runs about twice as
      fast in OpenBLAS as x @ weight.T;
    - each layer's bias is one more column of its weight, applied to a constant feature of 1 that every
      layer carries through (ReLU(1) = 1), so a layer is one matmul and one ReLU;
    - the dueling head is linear in the last hidden layer, value + advantage - mean(advantage), so it
      folds into one matrix: (w_value + w_adv - mean over actions of w_adv), and likewise the biases.

    The forward pass went from 17 numpy calls to 7 (about 22 us to 13 us for 16 CartPole rows). The
    result is a (rows, actions) transposed view; it agrees with QNetwork to float32 rounding.
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
        self.input_size = input_size
        self.dueling = dueling
        # Augmented layers: (out + 1, in + 1), the last row passing the constant feature on; all zeros
        # until the first load, like the parameters they hold.
        self._torso = []
        width = input_size
        for out in hidden:
            layer = np.zeros((out + 1, width + 1), np.float32)
            layer[out, width] = 1.0
            self._torso.append(layer)
            width = out
        self._head = np.zeros((num_actions, width + 1), np.float32)
        self._inputs: dict[int, np.ndarray] = {}  # by row count: features x rows, constant row set

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        check_weights(self.shapes, arrays)
        for i, layer in enumerate(self._torso):
            np.copyto(layer[:-1, :-1], arrays[f"torso.layers.{2 * i}.weight"], casting="same_kind")
            np.copyto(layer[:-1, -1], arrays[f"torso.layers.{2 * i}.bias"], casting="same_kind")
        if not self.dueling:
            np.copyto(self._head[:, :-1], arrays["q.weight"], casting="same_kind")
            np.copyto(self._head[:, -1], arrays["q.bias"], casting="same_kind")
            return
        value = np.hstack([arrays["value.weight"], np.asarray(arrays["value.bias"])[:, None]]).astype(np.float64)
        advantage = np.hstack([arrays["advantage.weight"], np.asarray(arrays["advantage.bias"])[:, None]])
        advantage = advantage.astype(np.float64)
        np.copyto(self._head, value + advantage - advantage.mean(axis=0, keepdims=True), casting="same_kind")

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        rows = len(obs)
        x = self._inputs.get(rows)
        if x is None:
            x = self._inputs[rows] = np.ones((self.input_size + 1, rows), np.float32)
        x[:-1] = np.reshape(obs, (rows, -1)).T  # the caller's rows copied in; the constant row stays 1
        for layer in self._torso:
            x = layer @ x
            np.maximum(x, 0.0, out=x)
        return (self._head @ x).T


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
