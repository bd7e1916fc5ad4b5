"""A FrameReplayBuffer's snapshot beyond its inner buffer's: the frame ring and the slot tables.

A snapshot is read from disk and so untrusted; besides shapes and dtypes, every stored transition's
frames must still be in the ring and its slots in range, or a restored buffer would hand out stacks
of the wrong frames. All of it is checked before the buffer changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

STATE_PREFIX = "frames."
# The frame ring and the per-transition tables, by their snapshot names.
TABLES = ("ring", "obs_slots", "next_obs_slots", "first_frame", "evict_below")


def frame_state(frame_capacity: int, written: int, tables: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """The frame part of a snapshot (copies), under `frames.` keys."""
    state: dict[str, Any] = {STATE_PREFIX + "capacity": frame_capacity, STATE_PREFIX + "written": written}
    state.update({STATE_PREFIX + name: tables[name].copy() for name in TABLES})
    return state


def check_frame_state(
    state: Mapping[str, Any], frame_capacity: int, capacity: int, tables: Mapping[str, np.ndarray]
) -> tuple[int, dict[str, np.ndarray]]:
    """The snapshot's frames written and tables, checked against a buffer with this frame ring size,
    transition capacity and `tables` (the live ones: their shapes and dtypes are what must match)."""

    def get(key: str) -> np.ndarray:
        if STATE_PREFIX + key not in state:
            raise ValueError(f"state_dict is missing {STATE_PREFIX + key!r} (not a frame-storage snapshot?)")
        return np.asarray(state[STATE_PREFIX + key])

    def array(key: str, like: np.ndarray) -> np.ndarray:
        arr = get(key)
        if arr.shape != like.shape or arr.dtype != like.dtype:
            raise ValueError(
                f"state_dict[{STATE_PREFIX + key!r}]: expected {like.dtype}{like.shape}, got {arr.dtype}{arr.shape}"
            )
        return arr

    if get("capacity").shape != () or int(get("capacity")) != frame_capacity:
        raise ValueError(f"state_dict frame capacity {get('capacity')} does not match this buffer's {frame_capacity}")
    if get("written").shape != ():
        raise ValueError("state_dict frames.written must be a scalar")
    written = int(get("written"))
    loaded = {name: array(name, tables[name]) for name in TABLES}
    if "ids" not in state or np.shape(state["ids"]) != (capacity,):
        raise ValueError("state_dict has no usable 'ids'")
    stored = np.asarray(state["ids"]) >= 0
    first_frame = loaded["first_frame"]
    lowest = written - frame_capacity
    if written < 0 or np.any(first_frame[stored] < lowest) or np.any(first_frame[stored] >= written):
        raise ValueError("state_dict frame ring does not hold every stored transition's frames")
    for name in ("obs_slots", "next_obs_slots"):
        slots = loaded[name]
        if np.any(slots[stored] < 0) or np.any(slots[stored] >= frame_capacity):
            raise ValueError("state_dict frame slots are out of range")
    return written, loaded
