"""Q-networks: one definition shared by actors (CPU copies) and the learner, so weights always fit."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from common.config import NetworkConfig


class MLPTorso(nn.Module):
    def __init__(self, input_size: int, hidden: Sequence[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(input_size, width), nn.ReLU()]
            input_size = width
        self.layers = nn.Sequential(*layers)
        self.output_size = input_size

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.layers(obs.flatten(1).float())


class NatureCNNTorso(nn.Module):
    """Mnih et al. 2015: three conv layers and a dense layer over stacked 84x84 uint8 frames."""

    def __init__(self, obs_shape: Sequence[int], hidden: int) -> None:
        super().__init__()
        channels = obs_shape[0]
        self.convs = nn.Sequential(
            nn.Conv2d(channels, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        with torch.no_grad():
            flat = self.convs(torch.zeros(1, *obs_shape)).shape[1]
        self.dense = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU())
        self.output_size = hidden

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.dense(self.convs(obs.float() / 255.0))


class QNetwork(nn.Module):
    """Q(s, .) for discrete actions, with an optional dueling head: Q = V + A - mean(A)."""

    def __init__(self, obs_shape: Sequence[int], num_actions: int, config: NetworkConfig) -> None:
        super().__init__()
        if config.torso == "nature_cnn":
            if len(obs_shape) != 3:
                raise ValueError(f"nature_cnn needs (channels, height, width) observations, got {tuple(obs_shape)}")
            self.torso: nn.Module = NatureCNNTorso(obs_shape, config.hidden[-1])
        else:
            self.torso = MLPTorso(int(np.prod(obs_shape)), config.hidden)
        width = self.torso.output_size
        self.dueling = config.dueling
        if self.dueling:
            self.value = nn.Linear(width, 1)
            self.advantage = nn.Linear(width, num_actions)
        else:
            self.q = nn.Linear(width, num_actions)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        features = self.torso(obs)
        if not self.dueling:
            return self.q(features)
        advantage = self.advantage(features)
        return self.value(features) + advantage - advantage.mean(dim=1, keepdim=True)


class NumpyForward:
    """Q(s, .) of an MLP QNetwork computed with numpy, for actors choosing actions a few rows at a time.

    At 4 to 16 rows per call torch's fixed cost per operator is most of the forward pass (about 0.35 ms
    for 16 CartPole envs, against about 0.05 ms here). The arrays are views of the network's own
    parameters, so weights loaded into the network in place (load_numpy_weights) are seen at once.
    Activations are kept transposed (features x rows): for a few rows, weight @ x runs about twice as
    fast in OpenBLAS as x @ weight.T. The result is returned as a (rows, actions) transposed view.
    """

    def __init__(self, net: QNetwork) -> None:
        if not isinstance(net.torso, MLPTorso):
            raise ValueError("NumpyForward covers the MLP torso only")
        linears = [m for m in net.torso.layers if isinstance(m, nn.Linear)]
        self.torso = [_views(m) for m in linears]
        self.dueling = net.dueling
        self.heads = [_views(net.value), _views(net.advantage)] if net.dueling else [_views(net.q)]

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, dtype=np.float32).reshape(len(obs), -1).T
        for weight, bias in self.torso:
            x = weight @ x
            x += bias
            np.maximum(x, 0.0, out=x)
        if not self.dueling:
            ((weight, bias),) = self.heads
            q = weight @ x
            q += bias
            return q.T
        (vw, vb), (aw, ab) = self.heads
        advantage = aw @ x
        advantage += ab
        mean = advantage.sum(axis=0, keepdims=True)  # sum, then divide: what mean() does, minus its overhead
        mean /= advantage.shape[0]
        q = vw @ x
        q += vb
        q = q + advantage
        q -= mean
        return q.T


def _views(linear: nn.Linear) -> tuple[np.ndarray, np.ndarray]:
    """(weight, bias as a column): views of the layer's parameters, for activations laid out features x rows."""
    return linear.weight.detach().numpy(), linear.bias.detach().numpy()[:, None]


def q_function(net: QNetwork):
    """A callable from observations (numpy) to Q-values (numpy): numpy for MLPs, torch otherwise."""
    if isinstance(net.torso, MLPTorso):
        return NumpyForward(net)

    def forward(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(np.asarray(obs))).numpy()

    return forward


def weights_to_numpy(model: nn.Module) -> dict[str, np.ndarray]:
    """A snapshot of parameters and buffers as CPU numpy arrays, ready to be framed on the wire.

    Always a copy: on a CPU model `.to("cpu")` would return views of the live parameters, and the
    sockets send large frames without copying, after the optimizer has moved on.
    """
    return {name: t.detach().to("cpu", copy=True).contiguous().numpy() for name, t in model.state_dict().items()}


def parameter_views(model: nn.Module) -> dict[str, np.ndarray]:
    """Parameters and buffers of a CPU model as numpy views, no copy: valid only until they next change."""
    return {name: t.detach().numpy() for name, t in model.state_dict().items()}


def load_numpy_weights(model: nn.Module, arrays: Mapping[str, np.ndarray]) -> None:
    """Apply received weights after checking names and shapes; a mismatch raises ValueError."""
    state = model.state_dict()
    if set(arrays) != set(state):
        missing, extra = sorted(set(state) - set(arrays)), sorted(set(arrays) - set(state))
        raise ValueError(f"weights do not fit this network: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, tensor in state.items():
        if tuple(arrays[name].shape) != tuple(tensor.shape):
            raise ValueError(f"weights do not fit this network: {name} {arrays[name].shape} vs {tuple(tensor.shape)}")
    with torch.no_grad(), warnings.catch_warnings():
        # Received frames are read-only and torch warns about wrapping them; copy_ only reads them, so
        # wrapping is safe and saves copying every parameter twice (6.75 MB for the Nature CNN).
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name, tensor in state.items():
            if tensor.device.type == "cpu":  # numpy's copy is about a fifth faster than torch's here
                np.copyto(tensor.numpy(), arrays[name], casting="same_kind")
            else:
                tensor.copy_(torch.from_numpy(np.asarray(arrays[name])))
