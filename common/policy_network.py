"""The Q-network copy that actors and the evaluator act with: numpy for MLPs and MinAtar's small CNN, torch
for the Nature CNN.

An actor only ever runs the forward pass of weights it received, a few rows at a time. For an MLP that
needs no torch at all: the numpy network below keeps its own parameters under QNetwork's names and
shapes, so any published weights load into it, and an actor process never imports torch (about a
second of CPU per process at start, which on a small machine full of actors is most of the start-up).
At 4 to 16 rows numpy is also several times faster than torch, whose fixed cost per operator dominates
(about 0.35 ms for 16 CartPole envs, against about 0.05 ms here). MinAtar's one 3x3 conv over a 10x10
grid is a single matmul over the grid's patches, so it stays in numpy too; the Nature CNN keeps torch.

Parameters start at zero: an actor loads the learner's weights before its first step.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np

from common.config import NetworkConfig
from common.network_shapes import MINATAR_CONV_CHANNELS, MINATAR_KERNEL, check_weights


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
    if config.torso == "minatar_cnn":
        return NumpyMinAtarQNetwork(obs_shape, config.hidden[-1], num_actions, dueling=config.dueling)
    from common.networks import TorchQNetwork  # torch only where a torso needs it

    return TorchQNetwork(obs_shape, num_actions, config, seed=seed)


def head_shapes(width: int, num_actions: int, dueling: bool) -> dict[str, tuple[int, ...]]:
    heads = {"value": 1, "advantage": num_actions} if dueling else {"q": num_actions}
    return {key: shape for name, out in heads.items() for key, shape in _linear(name, out, width).items()}


def _linear(name: str, out: int, width: int) -> dict[str, tuple[int, ...]]:
    return {f"{name}.weight": (out, width), f"{name}.bias": (out,)}


def folded_head(arrays: Mapping[str, np.ndarray], dueling: bool) -> np.ndarray:
    """The Q head as one (actions, width + 1) matrix, bias last; a dueling head folded in (float64).

    The dueling head is linear in its features, value + advantage - mean(advantage), so it is the
    single matrix (w_value + w_adv - mean over actions of w_adv), and likewise the biases.
    """
    if not dueling:
        return np.hstack([arrays["q.weight"], np.asarray(arrays["q.bias"])[:, None]]).astype(np.float64)
    value = np.hstack([arrays["value.weight"], np.asarray(arrays["value.bias"])[:, None]]).astype(np.float64)
    advantage = np.hstack([arrays["advantage.weight"], np.asarray(arrays["advantage.bias"])[:, None]])
    advantage = advantage.astype(np.float64)
    return value + advantage - advantage.mean(axis=0, keepdims=True)


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
        shapes.update(head_shapes(width, num_actions, dueling))
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
        np.copyto(self._head, folded_head(arrays, self.dueling), casting="same_kind")

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


class NumpyMinAtarQNetwork:
    """QNetwork with the MinAtar torso, forward pass only, in numpy; same parameter names and shapes.

    The 3x3 conv is one matmul of the grid's patches, (rows x 8 x 8, C x 9), by the conv's weights; the
    patches are one `take` of the flat uint8 grids with a fixed index (a strided window view copied out
    costs about three times as much). The conv's output stays (row, y, x, channel) ordered, and `load`
    permutes the dense layer's columns from torch's (channel, y, x) order to match, so no transpose runs
    per step. Agrees with QNetwork to float32 rounding.
    """

    def __init__(self, obs_shape: Sequence[int], hidden: int, num_actions: int, *, dueling: bool) -> None:
        channels, height, width = (int(n) for n in obs_shape)
        k, conv = MINATAR_KERNEL, MINATAR_CONV_CHANNELS
        self.out_hw = (height - k + 1, width - k + 1)
        flat = conv * self.out_hw[0] * self.out_hw[1]
        self.shapes = {"torso.conv.weight": (conv, channels, k, k), "torso.conv.bias": (conv,)}
        self.shapes.update(_linear("torso.dense.0", hidden, flat))
        self.shapes.update(head_shapes(hidden, num_actions, dueling))
        self.dueling = dueling
        cells = np.arange(channels * height * width).reshape(channels, height, width)
        windows = np.lib.stride_tricks.sliding_window_view(cells, (k, k), axis=(1, 2))  # (C, 8, 8, k, k)
        self._patch_index = windows.transpose(1, 2, 0, 3, 4).reshape(-1)  # (y, x, C, ky, kx) per row
        self._conv = np.zeros((channels * k * k, conv), np.float32)
        self._conv_bias = np.zeros(conv, np.float32)
        self._dense = np.zeros((flat, hidden), np.float32)
        self._dense_bias = np.zeros(hidden, np.float32)
        self._head = np.zeros((hidden, num_actions), np.float32)
        self._head_bias = np.zeros(num_actions, np.float32)

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        check_weights(self.shapes, arrays)
        conv_weight = np.asarray(arrays["torso.conv.weight"])
        np.copyto(self._conv, conv_weight.reshape(len(conv_weight), -1).T, casting="same_kind")
        np.copyto(self._conv_bias, arrays["torso.conv.bias"], casting="same_kind")
        dense = np.asarray(arrays["torso.dense.0.weight"]).reshape(-1, MINATAR_CONV_CHANNELS, *self.out_hw)
        np.copyto(self._dense, dense.transpose(0, 2, 3, 1).reshape(len(dense), -1).T, casting="same_kind")
        np.copyto(self._dense_bias, arrays["torso.dense.0.bias"], casting="same_kind")
        head = folded_head(arrays, self.dueling)
        np.copyto(self._head, head[:, :-1].T, casting="same_kind")
        np.copyto(self._head_bias, head[:, -1], casting="same_kind")

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        rows = len(obs)
        patches = np.take(np.reshape(obs, (rows, -1)), self._patch_index, axis=1).astype(np.float32, copy=False)
        h = patches.reshape(-1, len(self._conv)) @ self._conv
        h += self._conv_bias
        np.maximum(h, 0.0, out=h)
        h = h.reshape(rows, -1) @ self._dense
        h += self._dense_bias
        np.maximum(h, 0.0, out=h)
        q = h @ self._head
        q += self._head_bias
        return q
