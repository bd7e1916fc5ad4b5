"""Replay snapshots on disk: one `.npz` of plain numeric arrays, written atomically, read without pickle.

Why this shape: the replay buffer is the slowest part of a run to rebuild (actors need minutes to refill
it), so a crashed server should come back with the transitions it had. A snapshot is written to a temp
file in the same directory, fsynced, and renamed over `snapshot.npz`, and the directory is fsynced; the
snapshot it replaces is kept as `snapshot.prev.npz`. A reader therefore sees either a whole snapshot or
the previous one, and if the newest file is damaged anyway (a bad disk, a copy cut short) the loader
falls back to the previous one with a warning. `np.savez` stores each array uncompressed with a CRC-32,
and reading every array back in full checks it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.durable import write_rotating

log = logging.getLogger(__name__)

SNAPSHOT = "snapshot.npz"
PREVIOUS = "snapshot.prev.npz"
FORMAT_KEY = "snapshot.format"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class SnapshotInfo:
    """What one write produced, for the log line and the `snapshot_done` reply."""

    path: Path
    transitions: int
    inserted: int
    bytes: int
    seconds: float


def write_snapshot(directory: Path, state: Mapping[str, np.ndarray | int | float]) -> SnapshotInfo:
    """Write `state` (a replay state dict plus extras) as `directory/snapshot.npz`, atomically and durably."""
    start = time.monotonic()
    arrays = {key: np.asarray(value) for key, value in state.items()}
    arrays[FORMAT_KEY] = np.asarray(FORMAT_VERSION)
    size = write_rotating(directory, SNAPSHOT, PREVIOUS, lambda f: np.savez(f, **arrays))
    return SnapshotInfo(
        path=directory / SNAPSHOT,
        transitions=int(arrays["size"]),
        inserted=int(arrays["inserted_total"]),
        bytes=size,
        seconds=time.monotonic() - start,
    )


def _read(path: Path) -> dict[str, np.ndarray]:
    """Every array of one snapshot file, read in full (which checks each member's CRC)."""
    with np.load(path, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    version = arrays.get(FORMAT_KEY)
    if version is None or version.shape != () or int(version) != FORMAT_VERSION:
        raise ValueError(f"not a version-{FORMAT_VERSION} replay snapshot")
    return arrays


def load_snapshot(directory: Path) -> tuple[dict[str, np.ndarray], Path] | None:
    """The newest readable snapshot in `directory` and its path, else the previous one; None if neither."""
    for name in (SNAPSHOT, PREVIOUS):
        path = directory / name
        if not path.exists():
            continue
        try:
            return _read(path), path
        except Exception as err:  # torn or corrupt: zipfile, numpy and our own check raise various types
            log.warning("replay snapshot %s is unreadable (%s: %s); trying an older one", path, type(err).__name__, err)
    return None
