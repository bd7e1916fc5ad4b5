"""A ReplayBuffer's snapshot as plain arrays and scalars, and the checks a snapshot must pass to be loaded.

Snapshots come from disk (`replay/snapshot.py`), so they are read as untrusted: every key, shape, dtype
and counter is checked here, before the buffer changes at all, and a snapshot that fails leaves the
running buffer as it was. The RNG state is stored as uint64 words so that the file needs no pickle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

DATA_PREFIX = "data."
COUNTERS = ("inserted_total", "sampled_total", "stale_priority_updates")
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True)
class Restored:
    """A checked snapshot, ready to be copied into a buffer of the configuration it was checked against."""

    data: dict[str, np.ndarray]
    ids: np.ndarray
    priorities: np.ndarray | None  # raw tree leaves; None for a uniform buffer
    rng: np.random.Generator
    cursor: int
    size: int
    counters: dict[str, int]
    max_priority: float


def _scalar(state: Mapping[str, Any], key: str) -> Any:
    if key not in state:
        raise ValueError(f"state_dict is missing {key!r}")
    return np.asarray(state[key]).item()


def _array(state: Mapping[str, Any], key: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if key not in state:
        raise ValueError(f"state_dict is missing {key!r}")
    arr = np.asarray(state[key])
    if arr.shape != shape or arr.dtype != dtype:
        raise ValueError(f"state_dict[{key!r}]: expected {dtype}{shape}, got {arr.dtype}{arr.shape}")
    return arr


def check_state(
    state: Mapping[str, Any],
    config: Mapping[str, Any],
    layouts: Mapping[str, tuple[tuple[int, ...], np.dtype]],
    prioritized: bool,
) -> Restored:
    """Check a `state_dict` snapshot against a buffer's `config` (capacity, prioritized, alpha,
    priority_eps: its tree values depend on them) and its fields' storage `layouts` (name -> full shape
    and dtype); raise ValueError naming the first thing that does not fit."""
    for key, expected in config.items():
        if _scalar(state, key) != expected:
            raise ValueError(f"state_dict {key}={_scalar(state, key)!r} does not match buffer's {expected!r}")
    data_keys = {k[len(DATA_PREFIX) :] for k in state if k.startswith(DATA_PREFIX)}
    if data_keys != set(layouts):
        raise ValueError(f"state_dict fields {sorted(data_keys)} != buffer fields {sorted(layouts)}")
    cap = int(config["capacity"])
    data = {name: _array(state, DATA_PREFIX + name, shape, dtype) for name, (shape, dtype) in layouts.items()}
    ids = _array(state, "ids", (cap,), np.dtype(np.int64))
    prios = None
    if prioritized:
        prios = _array(state, "priorities", (cap,), np.dtype(np.float64))
        if not (np.all(np.isfinite(prios)) and np.all(prios >= 0)):
            raise ValueError("state_dict priorities must be finite and non-negative")
    rng = np.random.Generator(np.random.PCG64(0))
    try:
        decode_pcg64(rng, _array(state, "rng_state", (6,), np.dtype(np.uint64)))
    except (TypeError, ValueError, OverflowError) as exc:
        raise ValueError(f"state_dict rng_state is invalid: {exc}") from exc
    cursor, size = int(_scalar(state, "cursor")), int(_scalar(state, "size"))
    counters = {k: int(_scalar(state, k)) for k in COUNTERS}
    max_priority = float(_scalar(state, "max_priority"))
    if not (0 <= cursor < cap and 0 <= size <= cap):
        raise ValueError(f"state_dict cursor={cursor}/size={size} invalid for capacity {cap}")
    if any(v < 0 for v in counters.values()) or size > counters["inserted_total"]:
        raise ValueError("state_dict counters are inconsistent")
    if not (np.isfinite(max_priority) and max_priority >= 0):
        raise ValueError("state_dict max_priority must be finite and non-negative")
    return Restored(data, ids, prios, rng, cursor, size, counters, max_priority)


def encode_pcg64(rng: np.random.Generator) -> np.ndarray:
    """PCG64 state as uint64 words (its 128-bit ints don't fit numpy ints)."""
    st = rng.bit_generator.state
    if st["bit_generator"] != "PCG64":
        raise ValueError(f"unsupported bit generator {st['bit_generator']}")
    s, inc = int(st["state"]["state"]), int(st["state"]["inc"])
    words = [s >> 64, s & _MASK64, inc >> 64, inc & _MASK64, st["has_uint32"], st["uinteger"]]
    return np.array(words, dtype=np.uint64)


def decode_pcg64(rng: np.random.Generator, words: np.ndarray) -> None:
    w = [int(x) for x in words]
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
        "has_uint32": w[4],
        "uinteger": w[5],
    }
