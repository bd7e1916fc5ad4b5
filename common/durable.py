"""Atomic, durable file replacement for checkpoints and snapshots.

A crash at any moment must leave a loadable file: the new content goes to a temp file in the same
directory, is fsynced, the current file becomes the previous one, the temp file is renamed into place
and the directory is fsynced so that the renames themselves survive a power cut.

With `marker=True` the file also ends in a completion marker: a fixed-size trailer holding a magic
string, the byte length and the SHA-256 of everything before it, written last and fsynced with the rest
before the rename. `read_complete` gives the content back only when the marker is there and agrees, so
a torn, truncated or bit-flipped file is told apart from a good one before any parser sees it. The
marker lives in the file rather than beside it on purpose: a file and a separate marker file cannot be
renamed together, so a crash between their renames would leave a checkpoint whose marker describes
another one; a single file moves as one unit.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)

MARKER_MAGIC = b"distdqn-complete"
# magic, payload length in bytes, SHA-256 of the payload; little-endian, no padding (56 bytes)
_MARKER = struct.Struct("<16sQ32s")
_CHUNK = 1 << 20


class DamagedFile(Exception):
    """A file whose completion marker is missing or disagrees with its content."""


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _append_marker(f: BinaryIO) -> None:
    """Hash what the writer produced, as the file now holds it, and append the marker after it."""
    f.flush()
    f.seek(0)
    digest = hashlib.sha256()
    length = 0
    while chunk := f.read(_CHUNK):
        digest.update(chunk)
        length += len(chunk)
    f.seek(0, os.SEEK_END)
    f.write(_MARKER.pack(MARKER_MAGIC, length, digest.digest()))


def read_complete(path: Path) -> bytes:
    """The content of a file written with `marker=True`, once its completion marker checks out.

    Raises DamagedFile with the reason (no marker, length or digest mismatch), OSError if unreadable.
    The bytes checked are the bytes returned, so nothing can change between the check and the use.
    """
    data = path.read_bytes()
    if len(data) < _MARKER.size:
        raise DamagedFile(f"{len(data)} bytes, too short to end in a completion marker")
    magic, length, digest = _MARKER.unpack_from(data, len(data) - _MARKER.size)
    if magic != MARKER_MAGIC:
        raise DamagedFile("no completion marker at the end (a torn write, or a file not written by distdqn)")
    payload = memoryview(data)[: len(data) - _MARKER.size]
    if length != len(payload):
        raise DamagedFile(f"the completion marker records {length} bytes, the file holds {len(payload)}")
    if hashlib.sha256(payload).digest() != digest:
        raise DamagedFile("SHA-256 mismatch: the content differs from what was written")
    return bytes(payload)


def _damage(path: Path) -> str | None:
    """Why `path` is not a complete marked file, or None when it is."""
    try:
        read_complete(path)
    except (DamagedFile, OSError) as err:
        return str(err)
    return None


def write_rotating(
    directory: Path, name: str, previous: str, write: Callable[[BinaryIO], None], *, marker: bool = False
) -> int:
    """Replace `directory/name` with what `write` produces, keeping the old file as `previous`.

    Returns the new file's size (marker included). Temp files left by a writer killed mid-write are
    removed first; a failure (a full disk, a second signal) removes this writer's temp file and
    re-raises. With `marker`, the file gets a completion marker (see `read_complete`), and a current
    file that fails its own check is replaced without being rotated: a damaged file never displaces a
    good `previous`.
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
        with tmp.open("w+b" if marker else "wb") as f:
            write(f)
            if marker:
                _append_marker(f)
            f.flush()
            os.fsync(f.fileno())
        size = tmp.stat().st_size
        if target.exists():
            damage = _damage(target) if marker else None
            if damage is None:
                os.replace(target, directory / previous)
            else:
                log.warning("%s is damaged (%s): replacing it, %s stays as it is", target, damage, previous)
        os.replace(tmp, target)
        fsync_dir(directory)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size
