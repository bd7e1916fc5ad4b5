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
        self.low: np.ndarray | None = None
        self.high: np.ndarray | None = None
        if np.dtype(spec.obs_dtype).kind == "f":
            m = rc.max_abs_obs
            low = np.full(spec.obs_shape, -np.inf) if spec.obs_low is None else np.asarray(spec.obs_low, np.float64)
            high = np.full(spec.obs_shape, np.inf) if spec.obs_high is None else np.asarray(spec.obs_high, np.float64)
            # Some envs step slightly outside the space they declare (an angle past 2 pi): a bounded
            # dimension is widened by its own width, so honest data is kept and huge values still fail.
            bounded = np.isfinite(low) & np.isfinite(high)
            width = np.where(bounded, high - low, 0.0)
            self.low = np.where(bounded, low - width, -m).astype(spec.obs_dtype)
            self.high = np.where(bounded, high + width, m).astype(spec.obs_dtype)
            # distinct frames (H, W) of stacked float observations: the loosest bound over the stack
            self.frame_low = self.low.min(axis=0) if self.low.ndim == 3 else None
            self.frame_high = self.high.max(axis=0) if self.high.ndim == 3 else None

    def check_insert(self, kind: str, arrays: dict[str, np.ndarray]) -> tuple[str, str] | None:
        """(reason, detail) for a transitions or frame_transitions message that breaks a limit, else None.
        Comparisons are written so that NaN fails them too."""
        if self.low is not None:
            if kind == "transitions":
                for name in ("obs", "next_obs"):
                    x = arrays[name]
                    if not ((x >= self.low) & (x <= self.high)).all():
                        return "obs_out_of_bounds", f"{name} outside the observation space or max_abs_obs"
            elif self.frame_low is not None:
                x = arrays["frames"]
                if not ((x >= self.frame_low) & (x <= self.frame_high)).all():
                    return "obs_out_of_bounds", "frames outside the observation space or max_abs_obs"
        if not (np.abs(arrays["reward"]) <= self.max_abs_reward).all():
            return "reward_out_of_range", f"|reward| above replay.max_abs_reward={self.max_abs_reward:g}"
        problem = self.check_priorities(arrays["priority"])
        return None if problem is None else ("bad_priority", problem)

    def check_priorities(self, priority: np.ndarray) -> str | None:
        """Why these priorities are refused (negative, non-finite or above max_priority), else None."""
        if not ((priority >= 0) & (priority <= self.max_priority)).all():
            return f"priority outside [0, replay.max_priority={self.max_priority:g}]"
        return None
