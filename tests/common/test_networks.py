"""Q-networks: shapes, the dueling identity, and weights that survive the wire as snapshots."""

import numpy as np
import pytest
import torch

from common.config import NetworkConfig
from common.networks import NumpyForward, QNetwork, load_numpy_weights, q_function, weights_to_numpy
from common.wire import decode, encode


@pytest.mark.parametrize("dueling", [True, False])
def test_mlp_shapes(dueling: bool) -> None:
    net = QNetwork((4,), 3, NetworkConfig(hidden=(16, 16), dueling=dueling))
    assert net(torch.zeros(5, 4)).shape == (5, 3)


def test_dueling_head_centres_advantages() -> None:
    torch.manual_seed(0)
    net = QNetwork((4,), 3, NetworkConfig(hidden=(8,), dueling=True))
    obs = torch.randn(6, 4)
    features = net.torso(obs)
    q = net(obs)
    # Q - V is the centred advantage, so it averages to zero over actions.
    assert torch.allclose((q - net.value(features)).mean(dim=1), torch.zeros(6), atol=1e-6)


def test_nature_cnn_on_stacked_frames() -> None:
    net = QNetwork((4, 84, 84), 6, NetworkConfig(torso="nature_cnn", hidden=(512,)))
    assert net(torch.zeros(2, 4, 84, 84, dtype=torch.uint8)).shape == (2, 6)
    assert sum(p.numel() for p in net.parameters()) == pytest.approx(1.69e6, rel=0.01)


def test_published_weights_are_a_snapshot_not_a_view() -> None:
    net = QNetwork((4,), 2, NetworkConfig(hidden=(8,)))
    arrays = weights_to_numpy(net)
    before = {k: v.copy() for k, v in arrays.items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    for key, value in arrays.items():
        np.testing.assert_array_equal(value, before[key])


def test_weights_round_trip_through_the_wire() -> None:
    source = QNetwork((4,), 2, NetworkConfig(hidden=(8, 8)))
    target = QNetwork((4,), 2, NetworkConfig(hidden=(8, 8)))
    msg = decode(encode("weights", {"version": 3}, weights_to_numpy(source)))
    load_numpy_weights(target, msg.arrays)
    obs = torch.randn(3, 4)
    assert torch.equal(source(obs), target(obs))


def test_mismatched_weights_are_refused() -> None:
    small = weights_to_numpy(QNetwork((4,), 2, NetworkConfig(hidden=(8,))))
    with pytest.raises(ValueError, match="do not fit"):
        load_numpy_weights(QNetwork((4,), 2, NetworkConfig(hidden=(16,))), small)


@pytest.mark.parametrize("dueling", [True, False])
def test_numpy_forward_matches_torch_and_follows_loaded_weights(dueling: bool) -> None:
    config = NetworkConfig(torso="mlp", hidden=(32, 16), dueling=dueling)
    net = QNetwork((4,), 3, config).eval()
    forward = q_function(net)
    assert isinstance(forward, NumpyForward)
    obs = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    with torch.no_grad():
        expected = net(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(forward(obs), expected, rtol=1e-5, atol=1e-6)
    # New weights loaded into the network (as actors do) change the numpy forward too.
    other = QNetwork((4,), 3, config)
    load_numpy_weights(net, weights_to_numpy(other))
    with torch.no_grad():
        np.testing.assert_allclose(forward(obs), other(torch.from_numpy(obs)).numpy(), rtol=1e-5, atol=1e-6)
