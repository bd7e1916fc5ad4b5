"""Checkpoints written atomically and durably, with a completion marker, and read without pickle.

`torch.load(weights_only=True)` only rebuilds tensors and plain containers, so a checkpoint file from
an untrusted place cannot run code. The newest complete checkpoint is `latest.pt`; the one before it is
kept as `previous.pt` so that a damaged newest file still leaves something to resume from.

Each file is a `torch.save` zip followed by a 56-byte completion marker (`common.durable`): magic,
length and SHA-256 of the zip. The loader checks the marker before torch parses a byte, and falls back
to `previous.pt` with a warning naming the reason when `latest.pt` is missing, has no marker, or does
not match it. (torch itself ignores the trailer, so `torch.load("latest.pt", weights_only=True)` still
works for a person inspecting a checkpoint.)

The write sequence, with A the current `latest.pt` and B the new checkpoint:

1. remove temp files a killed writer left behind;
2. write B and its marker to `.latest.pt.tmp-PID`, fsync it;
3. read A back and check its marker; if it checks out, rename `latest.pt` -> `previous.pt`
   (a damaged A is not rotated: it would replace a good `previous.pt` with garbage);
4. rename the temp file -> `latest.pt`;
5. fsync the directory.

A crash (or a failure that raises) at any point leaves a complete checkpoint for the loader:

- before 3: `latest.pt` is A, untouched; a half-written temp file is never read (and step 1 of the
  next write removes it);
- between 3 and 4: there is no `latest.pt`; `previous.pt` is A, complete, and is loaded;
- after 4: `latest.pt` is B, whose marker was written and fsynced before the rename made it visible;
- a power cut before 5 may undo the renames. Each rename is atomic and moves one self-checking file,
  so every subset of the two renames leaves A or B under one of the two names, complete. After 5, B is
  durable.

What the marker cannot give: a checkpoint damaged in the same way under both names (say, a disk that
lost both) leaves nothing to resume from; the loader then returns None and the learner starts fresh
with a warning.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import torch

from common.durable import DamagedFile, read_complete, write_rotating

log = logging.getLogger(__name__)

LATEST = "latest.pt"
PREVIOUS = "previous.pt"


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path | None:
    """Write `state` as the new latest.pt; None, with an error logged and the checkpoints left as they
    were, when a tensor in it holds a non-finite number (a resume from it could only train NaN)."""
    bad = _non_finite(state)
    if bad is not None:
        log.error("not checkpointing: %s holds non-finite numbers; %s stays the latest", bad, directory / LATEST)
        return None
    write_rotating(directory, LATEST, PREVIOUS, lambda f: torch.save(state, f), marker=True)
    return directory / LATEST


def _non_finite(value: Any, name: str = "state") -> str | None:
    """The name of the first floating-point tensor in `value` (nested dicts and lists) that is not all finite."""
    if isinstance(value, torch.Tensor):
        return name if value.is_floating_point() and not bool(torch.isfinite(value).all()) else None
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = _non_finite(item, f"{name}.{key}")
        if found is not None:
            return found
    return None


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The newest complete, loadable checkpoint in `directory`, falling back to the previous one; None if none."""
    for name in (LATEST, PREVIOUS):
        path = directory / name
        if not path.exists():
            if name == LATEST and (directory / PREVIOUS).exists():
                log.warning("no %s (a write was interrupted?); trying %s", path, PREVIOUS)
            continue
        try:
            payload = read_complete(path)
        except (DamagedFile, OSError) as err:
            log.warning("checkpoint %s is incomplete or corrupt (%s); trying an older one", path, err)
            continue
        try:
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as err:  # complete, yet not a checkpoint we can read (e.g. a pickled object)
            log.warning("checkpoint %s is complete but unreadable (%s); trying an older one", path, err)
            continue
        if name == PREVIOUS:
            log.warning("using the previous checkpoint %s", path)
        return state
    return None
