"""The checks an insert must pass before it is stored, beyond what the wire decoder checks.

The decoder knows message schemas; these checks know the run: the env's observation spec and action
range, the largest message an actor sends, and the magnitude limits (replay/validation.py).
"""

from __future__ import annotations

from common.envs import EnvSpec
from common.wire import Message
from replay.validation import MagnitudeLimits

VECTORS = ("action", "reward", "discount", "priority", "version")


class InsertChecks:
    def __init__(self, spec: EnvSpec, max_insert: int, limits: MagnitudeLimits) -> None:
        self.spec = spec
        self.max_insert = max_insert
        self.limits = limits

    def problem(self, msg: Message, count: int) -> tuple[str, str] | None:
        """(reason, detail) for an insert of `count` rows that must be refused, else None."""
        problem = self._observations(msg, count)
        if problem is not None:
            return problem
        a = msg.arrays
        checks = (
            (count == 0, "empty_batch"),
            (count > self.max_insert, "batch_too_large"),
            (any(a[k].shape != (count,) for k in VECTORS), "bad_shape"),
            (bool(((a["action"] < 0) | (a["action"] >= self.spec.num_actions)).any()), "bad_action"),
            (bool(((a["discount"] < 0) | (a["discount"] > 1)).any()), "bad_discount"),
        )
        for failed, reason in checks:
            if failed:
                return reason, f"from actor {msg.meta['actor_index']}"
        problem = self.limits.check_insert(msg.kind, a)
        if problem is not None:
            return problem[0], f"{problem[1]}, from actor {msg.meta['actor_index']}"
        return None

    def _observations(self, msg: Message, count: int) -> tuple[str, str] | None:
        """(reason, detail) when the message's observations do not fit the run's spec, else None."""
        a = msg.arrays
        shape, dtype = self.spec.obs_shape, self.spec.obs_dtype
        if msg.kind == "transitions":
            for name in ("obs", "next_obs"):
                if a[name].shape[1:] != shape or a[name].dtype != dtype:
                    return "wrong_obs_spec", f"{name} {a[name].dtype}{a[name].shape[1:]} vs {dtype}{shape}"
            return None
        if len(shape) != 3:
            return "wrong_obs_spec", f"frames sent for {dtype}{shape} observations, which are not stacked frames"
        frames = a["frames"]
        if frames.ndim != 3 or frames.shape[1:] != shape[1:] or frames.dtype != dtype:
            return "wrong_obs_spec", f"frames {frames.dtype}{frames.shape[1:]} vs {dtype}{shape[1:]}"
        if frames.shape[0] > 2 * shape[0] * count:
            return "bad_frames", f"{frames.shape[0]} frames for {count} transitions"
        for name in ("obs_frames", "next_obs_frames"):
            index = a[name]
            if index.shape != (count, shape[0]):
                return "bad_frames", f"{name} shape {index.shape}, expected {(count, shape[0])}"
            if index.size and (int(index.min()) < 0 or int(index.max()) >= frames.shape[0]):
                return "bad_frames", f"{name} points outside the message's {frames.shape[0]} frames"
        return None
