"""Q-networks: shapes, the dueling identity, and weights that survive the wire as snapshots."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import NetworkConfig
from common.networks import QNetwork, TorchQNetwork, load_numpy_weights, weights_to_numpy
from common.policy_network import NumpyMLPQNetwork, policy_network
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
@pytest.mark.parametrize("hidden", [(32, 16), (8,)])
def test_numpy_policy_network_is_the_mlp_qnetwork(dueling: bool, hidden: tuple[int, ...]) -> None:
    """Same parameter names and shapes as QNetwork (so published weights load), same Q-values."""
    config = NetworkConfig(torso="mlp", hidden=hidden, dueling=dueling)
    policy = policy_network((4,), 3, config)
    assert isinstance(policy, NumpyMLPQNetwork)
    net = QNetwork((4,), 3, config).eval()
    assert policy.shapes == {name: tuple(t.shape) for name, t in net.state_dict().items()}
    obs = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    for _ in range(2):  # loading again replaces the weights in place
        policy.load(weights_to_numpy(net))
        with torch.no_grad():
            expected = net(torch.from_numpy(obs)).numpy()
        np.testing.assert_allclose(policy(obs), expected, rtol=1e-5, atol=1e-6)
        net = QNetwork((4,), 3, config).eval()


def test_policy_networks_refuse_weights_of_another_network() -> None:
    small = weights_to_numpy(QNetwork((4,), 2, NetworkConfig(hidden=(8,))))
    with pytest.raises(ValueError, match="do not fit"):
        policy_network((4,), 2, NetworkConfig(hidden=(16,))).load(small)
    with pytest.raises(ValueError, match="missing"):
        policy_network((4,), 2, NetworkConfig(hidden=(8,), dueling=False)).load(small)


def test_convolutional_policy_network_runs_the_torch_qnetwork() -> None:
    config = NetworkConfig(torso="nature_cnn", hidden=(32,))
    policy = policy_network((4, 84, 84), 3, config)
    assert isinstance(policy, TorchQNetwork)
    net = QNetwork((4, 84, 84), 3, config).eval()
    policy.load(weights_to_numpy(net))
    obs = np.random.default_rng(1).integers(0, 256, (2, 4, 84, 84), dtype=np.uint8)
    with torch.no_grad():
        np.testing.assert_array_equal(policy(obs), net(torch.from_numpy(obs)).numpy())


def test_a_convolutional_policy_network_acts_from_arrays_in_place_until_it_loads_its_own() -> None:
    config = NetworkConfig(torso="nature_cnn", hidden=(32,))
    policy = policy_network((4, 84, 84), 3, config)
    first, second = (QNetwork((4, 84, 84), 3, config).eval() for _ in range(2))
    obs = np.random.default_rng(2).integers(0, 256, (2, 4, 84, 84), dtype=np.uint8)

    def values(net: QNetwork) -> np.ndarray:
        with torch.no_grad():
            return net(torch.from_numpy(obs)).numpy()

    shared = weights_to_numpy(first)
    for array in shared.values():
        array.setflags(write=False)  # as a shared-memory slot is mapped
    policy.attach(shared)
    np.testing.assert_array_equal(policy(obs), values(first))
    changed = {name: array.copy() for name, array in shared.items()}
    live = weights_to_numpy(second)
    policy.attach(live)  # writable arrays: their changes show, since nothing was copied
    for array in live.values():
        array *= 2.0
    assert not np.array_equal(policy(obs), values(second))
    policy.load(shared)  # its own parameters again: the attached arrays are left as they were
    np.testing.assert_array_equal(policy(obs), values(first))
    for name, array in changed.items():
        np.testing.assert_array_equal(shared[name], array)
    with pytest.raises(ValueError, match="do not fit"):
        policy.attach({name: array[..., :1] for name, array in shared.items()})


def test_mlp_actors_never_import_torch() -> None:
    """Importing torch costs an actor process about a second of CPU at start; MLP actors do without."""
    code = (
        "import sys\n"
        "import actor.__main__, actor.actor, actor.evaluator\n"
        "from common.config import NetworkConfig\n"
        "from common.policy_network import policy_network\n"
        "policy_network((4,), 2, NetworkConfig(hidden=(8,)))\n"
        "sys.exit('torch' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[2]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, timeout=60).returncode == 0
