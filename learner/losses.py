"""Double DQN n-step targets and the prioritized Huber TD loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def nstep_targets(
    reward: torch.Tensor,
    discount: torch.Tensor,
    next_q_online: torch.Tensor,
    next_q_target: torch.Tensor,
    *,
    double: bool = True,
) -> torch.Tensor:
    """y = R + discount * Q_target(s', a*), a* = argmax_a Q_online(s', a) (Double DQN) or of Q_target.

    `reward` is the n-step discounted sum and `discount` already holds gamma^k, or 0 where the episode
    terminated inside the k steps, so no bootstrap ever crosses a termination while a truncated episode
    still bootstraps from its final observation.
    """
    if double:
        best = next_q_online.argmax(dim=1, keepdim=True)
        bootstrap = next_q_target.gather(1, best).squeeze(1)
    else:
        bootstrap = next_q_target.max(dim=1).values
    return reward + discount * bootstrap


def td_loss(
    q_values: torch.Tensor, actions: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Importance-weighted Huber loss and the absolute TD errors that become the new priorities."""
    chosen = q_values.gather(1, actions.unsqueeze(1)).squeeze(1)
    targets = targets.detach()
    elementwise = F.smooth_l1_loss(chosen, targets, reduction="none")
    loss = (weights * elementwise).mean()
    return loss, (targets - chosen).detach().abs()
