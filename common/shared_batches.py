"""Sampled batches through shared memory, for a learner on the replay server's own host.

Why: an Atari batch of 512 holds 29 MB of stacked frames. Over loopback TCP the kernel copies them into
the socket and out again, and at 50 batches/s that is about 3 GB/s of copying on the cores that also
ingest the actors' data. Instead the learner owns a file in /dev/shm with one slot per batch it may
have in flight; a `sample` request names a slot, replay writes the whole batch straight into it (the
observations gathered from its storage, then the small arrays), and its reply (`batch_ref`) is a header
only: nothing to receive or decode but the slot number. The learner trains on the slot in place.

A slot belongs to the server from the request that names it until the reply, then to the learner until
it asks for its next batch. The server writes only into a file directly in /dev/shm whose name matches
the pattern, a regular file owned by its own user with mode 0600 (see shm_files.open_checked), whose
header holds the request's token and whose slots hold exactly the requested batch of the run's
observations; for anything else it answers with an ordinary `batch`, and a learner answered that way
(replay on another host, or another user) removes its file and asks no more. The file is removed when
the learner closes it or exits.

The name and the token are two separate random values, and the token is only inside the file: anyone
can list /dev/shm and read the name, but only the learner's user can read the header. A request naming
the learner's file without its token (from someone who read the name) is refused, and could not make
the server write into a slot the learner is training on.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence

import numpy as np

from common import shm_files
from common.shm_files import ALIGN, PAGE, SHM_DIR, Unavailable, available, round_up

__all__ = ["SHM_DIR", "BatchFile", "BatchFileMapping", "SharedBatchesUnavailable", "available"]

MAGIC = b"distdqnB"
FORMAT_VERSION = 1
# A slot holds a whole `batch`: the observations in the run's dtype, the rest as on the wire.
ARRAYS = ("obs", "action", "reward", "discount", "next_obs", "weight", "index", "id")
FIXED_DTYPES = {
    "action": "int64",
    "reward": "float32",
    "discount": "float32",
    "weight": "float32",
    "index": "int64",
    "id": "int64",
}
MAX_SLOTS = 128
MAX_FILE_BYTES = 64 << 30
NAME_PATTERN = re.compile(r"distdqn-batches-[0-9a-f]{32}")


class SharedBatchesUnavailable(Unavailable):
    """The replay server cannot write this batch file; the reason says why."""


def _layout(batch_size: int, obs_shape: Sequence[int], obs_dtype: np.dtype) -> tuple[list, int]:
    """([name, dtype, shape, offset] of each array of a slot, bytes a slot takes): both sides compute it."""
    layout, offset = [], 0
    for name in ARRAYS:
        fixed = FIXED_DTYPES.get(name)
        dtype = np.dtype(fixed or obs_dtype)
        shape = [int(batch_size)] if fixed else [int(batch_size), *(int(d) for d in obs_shape)]
        offset = round_up(offset, ALIGN)
        layout.append([name, dtype.name, shape, offset])
        offset += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return layout, round_up(max(offset, 1), PAGE)


def _slot_views(mm, data_at: int, slot_bytes: int, layout: list, slots: int) -> list[dict[str, np.ndarray]]:
    return [
        {
            name: shm_files.array_view(mm, dtype, shape, data_at + k * slot_bytes + offset)
            for name, dtype, shape, offset in layout
        }
        for k in range(slots)
    ]


def remove_stale(directory: str = SHM_DIR) -> list[str]:
    """Remove batch files left by learners of this host and user that were killed (see shm_files)."""
    return shm_files.remove_stale(NAME_PATTERN, directory)


class BatchFile:
    """The learner's side: `slots` slots, each holding one batch of `batch_size` transitions."""

    def __init__(
        self, batch_size: int, obs_shape: Sequence[int], obs_dtype: np.dtype, slots: int, directory: str = SHM_DIR
    ) -> None:
        if not 1 <= slots <= MAX_SLOTS:
            raise ValueError(f"slots must be in [1, {MAX_SLOTS}], got {slots}")
        self.token = secrets.token_hex(16)  # only in the header: the name is public, the header private
        self.path = f"{directory}/distdqn-batches-{secrets.token_hex(16)}"
        self.batch_size = batch_size
        self.slots = slots
        layout, self.slot_bytes = _layout(batch_size, obs_shape, obs_dtype)
        remove_stale(directory)
        meta = {"token": self.token, "slots": slots, "slot_bytes": self.slot_bytes, "arrays": layout}
        self._file = shm_files.CreatedFile(
            self.path, MAGIC, FORMAT_VERSION, {**meta, **shm_files.owner()}, slots * self.slot_bytes
        )
        self._views = _slot_views(self._file.mm, self._file.data_at, self.slot_bytes, layout, slots)
        self._file.publish_header()

    @property
    def nbytes(self) -> int:
        return self._file.nbytes

    @property
    def closed(self) -> bool:
        return self._file.closed

    def views(self, slot: int) -> dict[str, np.ndarray]:
        """The arrays of one slot, in place in the file."""
        return self._views[slot]

    def close(self) -> None:
        """Remove the file; the server's mapping of it stays valid (and harmless) until it lets go."""
        self._views = []
        self._file.close()


class BatchFileMapping:
    """The replay server's side: a learner's batch file, checked to be exactly what the request says."""

    def __init__(
        self,
        path: str,
        token: str,
        batch_size: int,
        obs_shape: Sequence[int],
        obs_dtype: np.dtype,
        directory: str = SHM_DIR,
    ) -> None:
        self._file = shm_files.MappedFile(
            path,
            "batches",
            NAME_PATTERN,
            MAGIC,
            FORMAT_VERSION,
            writable=True,
            max_bytes=MAX_FILE_BYTES,
            directory=directory,
            error=SharedBatchesUnavailable,
        )
        try:
            self._check(token, batch_size, obs_shape, obs_dtype)
        except BaseException:
            self._file.close()
            raise
        self.path, self.token, self.batch_size = path, token, batch_size

    def _check(self, token: str, batch_size: int, obs_shape: Sequence[int], obs_dtype: np.dtype) -> None:
        layout, path = self._file.layout, self._file.path
        if layout.get("token") != token:
            raise SharedBatchesUnavailable(f"{path}: the request's token is not this file's")
        expected, slot_bytes = _layout(batch_size, obs_shape, obs_dtype)
        slots = layout.get("slots")
        if layout.get("arrays") != expected or layout.get("slot_bytes") != slot_bytes:
            raise SharedBatchesUnavailable(f"{path}: slots are not batches of {batch_size} of this run's observations")
        if (
            type(slots) is not int
            or not 1 <= slots <= MAX_SLOTS
            or self._file.data_at + slots * slot_bytes > self._file.size
        ):
            raise SharedBatchesUnavailable(f"{path}: slots outside the file")
        self.slots = slots
        self._views = _slot_views(self._file.mm, self._file.data_at, slot_bytes, expected, slots)

    def views(self, slot: int) -> dict[str, np.ndarray]:
        """The arrays of one slot, to write a batch into; IndexError outside [0, slots)."""
        if not 0 <= slot < self.slots:
            raise IndexError(f"slot {slot} outside [0, {self.slots})")
        return self._views[slot]

    def close(self) -> None:
        self._views = []
        self._file.close()
