"""Q-networks: one definition shared by actors (CPU copies) and the learner, so weights always fit."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from common.config import NetworkConfig
from common.network_shapes import MINATAR_CONV_CHANNELS, MINATAR_KERNEL, check_weights


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


class MinAtarTorso(nn.Module):
    """MinAtar's reference network (Young & Tian 2019): one 3x3 conv of 16 channels, then a dense layer.

    Over (C, 10, 10) grids of 0/1 cells (common/envs.py's `ChannelsFirst`), so no scaling; no padding,
    so the conv's output is 16 x 8 x 8. `hidden` is the dense layer's width (the reference's 128).
    """

    def __init__(self, obs_shape: Sequence[int], hidden: int) -> None:
        super().__init__()
        channels, height, width = obs_shape
        self.conv = nn.Conv2d(channels, MINATAR_CONV_CHANNELS, MINATAR_KERNEL, stride=1)
        flat = MINATAR_CONV_CHANNELS * (height - MINATAR_KERNEL + 1) * (width - MINATAR_KERNEL + 1)
        self.dense = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU())
        self.output_size = hidden

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.dense(torch.relu(self.conv(obs.float())).flatten(1))


def _torso(obs_shape: Sequence[int], config: NetworkConfig) -> nn.Module:
    if config.torso == "mlp":
        return MLPTorso(int(np.prod(obs_shape)), config.hidden)
    if len(obs_shape) != 3:
        raise ValueError(f"{config.torso} needs (channels, height, width) observations, got {tuple(obs_shape)}")
    if config.torso == "minatar_cnn":
        return MinAtarTorso(obs_shape, config.hidden[-1])
    return NatureCNNTorso(obs_shape, config.hidden[-1])


class QNetwork(nn.Module):
    """Q(s, .) for discrete actions, with an optional dueling head: Q = V + A - mean(A)."""

    def __init__(self, obs_shape: Sequence[int], num_actions: int, config: NetworkConfig) -> None:
        super().__init__()
        self.torso = _torso(obs_shape, config)
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
    check_weights({name: tuple(tensor.shape) for name, tensor in state.items()}, arrays)
    with torch.no_grad(), warnings.catch_warnings():
        # Received frames are read-only and torch warns about wrapping them; copy_ only reads them, so
        # wrapping is safe and saves copying every parameter twice (6.75 MB for the Nature CNN).
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name, tensor in state.items():
            if tensor.device.type == "cpu":  # numpy's copy is about a fifth faster than torch's here
                np.copyto(tensor.numpy(), arrays[name], casting="same_kind")
            else:
                tensor.copy_(torch.from_numpy(np.asarray(arrays[name])))


class TorchQNetwork:
    """A QNetwork evaluated with torch (one thread), for torsos numpy would run slowly (convolutions).

    Its parameters are either its own (`load` copies into them) or, after `attach`, the caller's arrays
    used in place: a shared-memory slot that a hundred actors of a host act from, where each copying
    its own 6.75 MB of every version would take more CPU than the relay that wrote it."""

    def __init__(self, obs_shape: Sequence[int], num_actions: int, config: NetworkConfig, *, seed: int = 0) -> None:
        torch.set_num_threads(1)
        torch.manual_seed(seed)
        self.net = QNetwork(obs_shape, num_actions, config).eval()
        self.attached = False
        self._params = list(self.net.named_parameters())  # looked up once: attach runs at every version
        self._shapes = {name: tuple(param.shape) for name, param in self._params}
        self._only_parameters = len(self._params) == len(self.net.state_dict())

    def load(self, arrays: Mapping[str, np.ndarray]) -> None:
        if self.attached:  # attached arrays may be read-only: own parameters again before copying in
            for param in self.net.parameters():
                param.data = torch.empty_like(param.data)
            self.attached = False
        load_numpy_weights(self.net, arrays)

    def attach(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Act with `arrays` in place from now on, no copy: the caller keeps them alive and unchanged
        (or recomputes what it computed while they changed) until the next `attach` or `load`."""
        if not self._only_parameters:
            raise ValueError("only a network without buffers can act from arrays in place")
        check_weights(self._shapes, arrays)
        with warnings.catch_warnings():  # the slot is mapped read-only; the forward pass only reads it
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensors = [torch.from_numpy(np.asarray(arrays[name])) for name, _ in self._params]
        for (name, param), tensor in zip(self._params, tensors, strict=True):
            if tensor.dtype != param.dtype:
                raise ValueError(f"{name} is {tensor.dtype}, the network's is {param.dtype}")
        for (_, param), tensor in zip(self._params, tensors, strict=True):
            param.data = tensor
        self.attached = True

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.net(torch.from_numpy(np.asarray(obs))).numpy()
