"""Magnitude checks on inserted transitions and priority updates.

Why: the decoder refuses NaN and infinity, but finite huge values (an observation of 3e38, a priority
of 1e30) pass it and then poison the learner (overflowing losses, a sum tree dominated by one slot).
Observations must lie in the env's observation space (widened by its width) where it is bounded and
within replay.max_abs_obs where it is not; rewards within replay.max_abs_reward; priorities in
[0, replay.max_priority]. Integer observations (uint8 frames) cannot be huge and are not checked.
"""

from __future__ import annotations

import numpy as np

from common.config import ReplayConfig
from common.envs import EnvSpec


class MagnitudeLimits:
    def __init__(self, spec: EnvSpec, rc: ReplayConfig) -> None:
        self.max_abs_reward = rc.max_abs_reward
        self.max_priority = rc.max_priority
        self.bounds: _Bounds | None = None
        self.frame_bounds: _Bounds | None = None
        if np.dtype(spec.obs_dtype).kind == "f":
            m = rc.max_abs_obs
            low = np.full(spec.obs_shape, -np.inf) if spec.obs_low is None else np.asarray(spec.obs_low, np.float64)
            high = np.full(spec.obs_shape, np.inf) if spec.obs_high is None else np.asarray(spec.obs_high, np.float64)
            # Some envs step slightly outside the space they declare (an angle past 2 pi): a bounded
            # dimension is widened by its own width, so honest data is kept and huge values still fail.
            bounded = np.isfinite(low) & np.isfinite(high)
            width = np.where(bounded, high - low, 0.0)
            low = np.where(bounded, low - width, -m).astype(spec.obs_dtype)
            high = np.where(bounded, high + width, m).astype(spec.obs_dtype)
            self.bounds = _Bounds(low, high)
            if low.ndim == 3:  # distinct frames (H, W) of stacked float observations: the loosest over the stack
                self.frame_bounds = _Bounds(low.min(axis=0), high.max(axis=0))

    def check_insert(self, kind: str, arrays: dict[str, np.ndarray]) -> tuple[str, str] | None:
        """(reason, detail) for a transitions or frame_transitions message that breaks a limit, else None.
        Comparisons are written so that NaN fails them too."""
        if self.bounds is not None:
            if kind == "transitions":
                for name in ("obs", "next_obs"):
                    if not _within(arrays[name], self.bounds):
                        return "obs_out_of_bounds", f"{name} outside the observation space or max_abs_obs"
            elif self.frame_bounds is not None and not _within(arrays["frames"], self.frame_bounds):
                return "obs_out_of_bounds", "frames outside the observation space or max_abs_obs"
        reward = arrays["reward"]
        if reward.size and not (reward.min() >= -self.max_abs_reward and reward.max() <= self.max_abs_reward):
            return "reward_out_of_range", f"|reward| above replay.max_abs_reward={self.max_abs_reward:g}"
        problem = self.check_priorities(arrays["priority"])
        return None if problem is None else ("bad_priority", problem)

    def check_priorities(self, priority: np.ndarray) -> str | None:
        """Why these priorities are refused (negative, non-finite or above max_priority), else None."""
        if priority.size and not (priority.min() >= 0 and priority.max() <= self.max_priority):
            return f"priority outside [0, replay.max_priority={self.max_priority:g}]"
        return None


class _Bounds:
    """Per-element bounds, and the tightest of them as scalars for a quick first test."""

    def __init__(self, low: np.ndarray, high: np.ndarray) -> None:
        self.low, self.high = low, high
        self.tightest_low, self.tightest_high = float(low.max()), float(high.min())


def _within(x: np.ndarray, bounds: _Bounds) -> bool:
    """Every element inside [low, high] (broadcast over rows); False for NaN. The whole array's min and
    max against the tightest bound settle most messages with two reductions; the rest are compared in full."""
    if not x.size:
        return True
    if x.min() >= bounds.tightest_low and x.max() <= bounds.tightest_high:
        return True
    return bool((x >= bounds.low).all() and (x <= bounds.high).all())
