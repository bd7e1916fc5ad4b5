"""What a ReplayBuffer accepts: the field specs it stores, and the checks of each call's arguments.

The replay server hands the buffer arrays decoded from peers' messages, so every call checks everything
it is given before it writes anything: a bad message is refused whole, never half stored.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class FieldSpec:
    """Per-transition layout of one stored field (no batch dimension).

    Normalized on construction so specs compare equal regardless of whether
    they were written with lists / dtype strings or tuples / ``np.dtype``.
    """

    shape: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        shape = tuple(int(d) for d in self.shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"field shape must be non-negative, got {shape}")
        dtype = np.dtype(self.dtype)
        if dtype.hasobject:
            raise ValueError("object dtypes are not supported (storage must be plain numeric)")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "dtype", dtype)


def check_priorities(priorities: Any, n: int, what: str) -> np.ndarray:
    p = np.asarray(priorities, dtype=np.float64)
    if p.shape != (n,):
        raise ValueError(f"{what} must have shape ({n},), got {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{what} must be finite")
    if np.any(p < 0):
        raise ValueError(f"{what} must be non-negative")
    return p


def is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def check_batch(fields: Mapping[str, FieldSpec], batch: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], int]:
    """The batch's fields as arrays of their specs' dtypes and shapes, all of one batch size B; and B."""
    if not isinstance(batch, Mapping):
        raise ValueError("batch must be a mapping of field name -> array")
    missing = fields.keys() - batch.keys()
    extra = batch.keys() - fields.keys()
    if missing or extra:
        raise ValueError(
            f"batch fields do not match spec: missing={sorted(missing)}, unexpected={sorted(map(str, extra))}"
        )
    arrays: dict[str, np.ndarray] = {}
    n: int | None = None
    for name, spec in fields.items():
        arr = np.asarray(batch[name])
        if arr.dtype != spec.dtype:
            raise ValueError(f"field {name!r}: dtype {arr.dtype} != spec {spec.dtype}")
        if arr.ndim != 1 + len(spec.shape) or arr.shape[1:] != spec.shape:
            raise ValueError(f"field {name!r}: shape {arr.shape} != (B, *{spec.shape})")
        if n is None:
            n = arr.shape[0]
        elif arr.shape[0] != n:
            raise ValueError(f"field {name!r}: batch size {arr.shape[0]} != {n} of other fields")
        arrays[name] = arr
    assert n is not None
    return arrays, n


def check_update(indices: Any, ids: Any, priorities: Any, capacity: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A priority update's arrays: int64 slots in [0, capacity), integer ids and priorities, all of one length."""
    idx = np.asarray(indices)
    if idx.ndim != 1:
        raise ValueError(f"indices must be 1-D, got shape {idx.shape}")
    n = idx.shape[0]
    if n and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64, copy=False)
    if n and (idx.min() < 0 or idx.max() >= capacity):
        raise ValueError(f"indices must lie in [0, {capacity})")
    id_arr = np.asarray(ids)
    if id_arr.shape != (n,):
        raise ValueError(f"ids must have shape ({n},), got {id_arr.shape}")
    if n and not np.issubdtype(id_arr.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {id_arr.dtype}")
    raw = check_priorities(priorities, n, "priorities")
    return idx, id_arr, raw
