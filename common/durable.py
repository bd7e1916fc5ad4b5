"""Atomic, durable file replacement for checkpoints and snapshots.

A crash at any moment must leave a loadable file: the new content goes to a temp file in the same
directory, is fsynced, the current file becomes the previous one, the temp file is renamed into place
and the directory is fsynced so that the renames themselves survive a power cut.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_rotating(directory: Path, name: str, previous: str, write: Callable[[BinaryIO], None]) -> int:
    """Replace `directory/name` with what `write` produces, keeping the old file as `previous`.

    Returns the new file's size. Temp files left by a writer killed mid-write are removed first; a
    failure (a full disk, a second signal) removes this writer's temp file and re-raises.
    """
    directory.mkdir(parents=True, exist_ok=True)
    prefix = f".{name}.tmp-"
    for stale in directory.glob(f"{prefix}*"):
        try:
            stale.unlink()
        except OSError as err:  # gone already, or not ours to remove: not worth failing the write
            log.debug("could not remove %s: %s", stale, err)
    target = directory / name
    tmp = directory / f"{prefix}{os.getpid()}"
    try:
        with tmp.open("wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        if target.exists():
            os.replace(target, directory / previous)
        os.replace(tmp, target)
        fsync_dir(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size
