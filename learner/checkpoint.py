"""Checkpoints written atomically (temp file, fsync, rename, directory fsync) and read without pickle.

`torch.load(weights_only=True)` only rebuilds tensors and plain containers, so a checkpoint file from
an untrusted place cannot run code. The newest complete checkpoint is `latest.pt`; the one before it is
kept as `previous.pt` so that a damaged newest file still leaves something to resume from.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from common.durable import write_rotating

log = logging.getLogger(__name__)

LATEST = "latest.pt"
PREVIOUS = "previous.pt"


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    write_rotating(directory, LATEST, PREVIOUS, lambda f: torch.save(state, f))
    return directory / LATEST


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The newest loadable checkpoint in `directory`, falling back to the previous one; None if none."""
    for name in (LATEST, PREVIOUS):
        path = directory / name
        if not path.exists():
            continue
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # torn or corrupt file: say so and try the older one
            log.warning("checkpoint %s is unreadable (%s); trying an older one", path, err)
    return None
