"""Double-DQN n-step targets and the TD loss against numbers worked out by hand."""

import pytest
import torch

from learner.losses import nstep_targets, td_loss


def test_double_dqn_target_hand_computed() -> None:
    # Two transitions, three actions. Online net picks the action, target net values it.
    reward = torch.tensor([1.0, 0.5])
    discount = torch.tensor([0.99**3, 0.0])  # second one terminated inside its n steps
    next_online = torch.tensor([[1.0, 3.0, 2.0], [5.0, 0.0, 0.0]])
    next_target = torch.tensor([[10.0, 4.0, 20.0], [7.0, 8.0, 9.0]])
    y = nstep_targets(reward, discount, next_online, next_target, double=True)
    # First: argmax online = action 1 -> target value 4 (not the target's own max, 20).
    assert y[0].item() == pytest.approx(1.0 + 0.99**3 * 4.0)
    # Second: terminated, so no bootstrap at all.
    assert y[1].item() == pytest.approx(0.5)


def test_plain_dqn_target_uses_target_max() -> None:
    y = nstep_targets(
        torch.tensor([1.0]),
        torch.tensor([0.5]),
        torch.tensor([[1.0, 3.0, 2.0]]),
        torch.tensor([[10.0, 4.0, 20.0]]),
        double=False,
    )
    assert y.item() == pytest.approx(1.0 + 0.5 * 20.0)


def test_truncated_transition_bootstraps() -> None:
    # A truncated episode keeps discount gamma^k > 0, so its final observation is bootstrapped.
    y = nstep_targets(
        torch.tensor([2.0]), torch.tensor([0.9**2]), torch.tensor([[0.0, 1.0]]), torch.tensor([[3.0, 5.0]])
    )
    assert y.item() == pytest.approx(2.0 + 0.81 * 5.0)


def test_td_loss_is_importance_weighted_huber() -> None:
    q = torch.tensor([[0.0, 1.0], [2.0, 0.0]], requires_grad=True)
    actions = torch.tensor([1, 0])
    targets = torch.tensor([1.5, 5.0])  # errors 0.5 (quadratic zone) and 3.0 (linear zone)
    weights = torch.tensor([1.0, 0.5])
    loss, td = td_loss(q, actions, targets, weights)
    expected = (1.0 * 0.5 * 0.5**2 + 0.5 * (3.0 - 0.5)) / 2
    assert loss.item() == pytest.approx(expected)
    assert td.tolist() == pytest.approx([0.5, 3.0])
    loss.backward()
    # Only the chosen actions get gradient.
    assert q.grad[0, 0].item() == 0.0 and q.grad[1, 1].item() == 0.0
    assert q.grad[0, 1].item() != 0.0 and q.grad[1, 0].item() != 0.0
