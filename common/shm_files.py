"""Files in /dev/shm that one process of a run creates and another maps: what weights and batches share.

Every such file starts with the same header: a fixed struct (magic, format, layout bytes, where the data
starts), then at LAYOUT_AT a msgpack map that says what the data holds and who made it (`host`, `pid`,
and a random `token`). Files are created with mode 0600 and O_EXCL, and removed by their creator when it
closes, is collected or exits; a creator killed with SIGKILL leaves its file for the next one to remove.

/dev/shm is writable by every user, so a name there proves nothing: another user can plant a file, a
link or a FIFO under any name it can guess or read. `open_checked` is the one way in: a name directly in
the directory and matching the pattern, opened without following links and without blocking (a FIFO
would hang `open`), then checked on the open descriptor to be a regular file of this user's that no one
else can write. Every process of a run runs as the run's user, so that is the only owner to trust.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import re
import socket
import stat
import struct
import weakref
from collections.abc import Sequence
from typing import Any

import msgpack
import numpy as np

from common.safe_log import printable

SHM_DIR = "/dev/shm"
LAYOUT_AT = 128
ALIGN = 64
PAGE = 4096
MAX_LAYOUT_BYTES = 1 << 20
HEADER = struct.Struct("<8sIIQ")  # magic, format, layout bytes, where the data starts


class Unavailable(Exception):
    """This process cannot use the file; the reason says why."""


def available(directory: str = SHM_DIR) -> bool:
    return os.path.isdir(directory) and os.access(directory, os.W_OK | os.X_OK)


def round_up(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def owner() -> dict[str, Any]:
    """What a layout records of its creator, so that a later process can tell whether it still lives."""
    return {"host": socket.gethostname(), "pid": os.getpid()}


class CreatedFile:
    """A new file of `data_bytes` after its header, mapped read-write; removed at close() or exit."""

    def __init__(self, path: str, magic: bytes, file_format: int, layout: dict[str, Any], data_bytes: int) -> None:
        packed = msgpack.packb(layout)
        self.path = path
        self.data_at = round_up(LAYOUT_AT + len(packed), PAGE)
        self.nbytes = self.data_at + data_bytes
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, self.nbytes)
            self.mm = mmap.mmap(fd, self.nbytes)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        # Removed at close(), or when the object is collected or the interpreter exits without one.
        self._remove_file = weakref.finalize(self, _unlink_quietly, path, os.getpid())
        self.mm[LAYOUT_AT : LAYOUT_AT + len(packed)] = packed
        self._header = (magic, file_format, len(packed), self.data_at)
        self._closed = False

    def publish_header(self) -> None:
        """Write the fixed header, which readers check first: call it once the file is ready to be read."""
        HEADER.pack_into(self.mm, 0, *self._header)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._remove_file()
            _unmap(self.mm)


def open_checked(
    path: str,
    kind: str,
    pattern: re.Pattern[str],
    *,
    writable: bool,
    directory: str = SHM_DIR,
    error: type[Unavailable] = Unavailable,
) -> tuple[int, os.stat_result]:
    """(an open descriptor, its fstat) of `path` if it is a regular file directly in `directory`, named
    like `pattern`, owned by this process's user and writable by no one else (to be written: mode 0600);
    else `error`, whose message names the path log-safely. The caller closes the descriptor."""
    name = os.path.basename(path)
    if path != os.path.join(directory, name) or not pattern.fullmatch(name):
        raise error(f"not a {kind} file this process will open: {printable(path, 200)}")
    flags = os.O_RDWR if writable else os.O_RDONLY
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:  # ELOOP: a symbolic link; ENOENT: gone
        raise error(f"cannot open {path}: {err.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path} is not a {kind} file (not a regular file)")
        mode = stat.S_IMODE(info.st_mode)
        if info.st_uid != os.geteuid() or mode & (0o077 if writable else 0o022):
            raise error(f"{path} is not private to this user (owner {info.st_uid}, mode {mode:o})")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


class MappedFile:
    """Another process's file, mapped once `open_checked` accepts it. `kind` names the file in error
    messages, which are raised as `error` (the caller's own kind of Unavailable)."""

    def __init__(
        self,
        path: str,
        kind: str,
        pattern: re.Pattern[str],
        magic: bytes,
        file_format: int,
        *,
        writable: bool,
        max_bytes: int,
        directory: str = SHM_DIR,
        error: type[Unavailable] = Unavailable,
    ) -> None:
        fd, info = open_checked(path, kind, pattern, writable=writable, directory=directory, error=error)
        try:
            if not PAGE <= info.st_size <= max_bytes:
                raise error(f"{path} is not a {kind} file (size {info.st_size})")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            self.mm = mmap.mmap(fd, info.st_size, prot=prot)
        finally:
            os.close(fd)
        self.path = path
        self.size = info.st_size
        self._closed = False
        try:
            self.layout, self.data_at = self._parse(kind, magic, file_format, error)
        except BaseException:
            self.mm.close()
            raise

    def _parse(self, kind: str, magic: bytes, file_format: int, error: type[Unavailable]) -> tuple[dict[str, Any], int]:
        found, found_format, layout_bytes, data_at = HEADER.unpack_from(self.mm, 0)
        if found != magic or found_format != file_format:
            raise error(f"{self.path}: not a distdqn {kind} file of format {file_format}")
        if not 0 < layout_bytes <= min(MAX_LAYOUT_BYTES, self.size - LAYOUT_AT) or data_at < LAYOUT_AT + layout_bytes:
            raise error(f"{self.path}: bad layout size")
        try:
            layout = msgpack.unpackb(self.mm[LAYOUT_AT : LAYOUT_AT + layout_bytes], raw=False, strict_map_key=True)
        except Exception as err:  # msgpack raises several unrelated types for garbage
            raise error(f"{self.path}: unreadable layout ({type(err).__name__})") from None
        if not isinstance(layout, dict):
            raise error(f"{self.path}: unreadable layout")
        return layout, data_at

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _unmap(self.mm)


def array_view(mm: mmap.mmap, dtype: np.dtype | str, shape: Sequence[int], offset: int) -> np.ndarray:
    """An array in the mapping that holds it mapped: np.frombuffer takes a buffer export, so the mapping
    cannot be closed under the array (np.ndarray(buffer=mm) takes none, and a closed one then crashes)."""
    dtype = np.dtype(dtype)
    count = math.prod(shape)
    return np.frombuffer(mm, dtype=dtype, count=count, offset=offset).reshape(tuple(shape))


def remove_stale(pattern: re.Pattern[str], directory: str = SHM_DIR) -> list[str]:
    """Remove files named like `pattern` left by processes of this host and user that were killed before
    removing their own (SIGKILL); a file whose creator may still be alive, or cannot be told, is left."""
    removed = []
    host = socket.gethostname()
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if not pattern.fullmatch(name):
            continue
        try:
            fd, _ = open_checked(path, "stale", pattern, writable=False, directory=directory)
            with os.fdopen(fd, "rb") as f:
                head = f.read(PAGE)
            _, _, layout_bytes, _ = HEADER.unpack_from(head, 0)
            creator = msgpack.unpackb(head[LAYOUT_AT : LAYOUT_AT + layout_bytes], raw=False)
            if creator.get("host") != host or not isinstance(creator.get("pid"), int) or _alive(creator["pid"]):
                continue
            os.unlink(path)
            removed.append(path)
        except Exception:  # unreadable, half-written, or gone meanwhile: not ours to judge
            continue
    return removed


def _unmap(mm: mmap.mmap) -> None:
    """Unmap now, or, while arrays still view the mapping (a batch in use), when the last of them goes."""
    with contextlib.suppress(BufferError):
        mm.close()


def _unlink_quietly(path: str, owner_pid: int) -> None:
    if os.getpid() != owner_pid:  # a forked child exiting: the file is its parent's
        return
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
