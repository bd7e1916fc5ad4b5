"""Weights through shared memory, for actors on the learner's own host.

Why: a Nature CNN is 6.75 MB, and eight local subscribers of the PUB socket make the kernel push
54 MB through loopback TCP per publication (about 40 ms on two cores). Written once into a file in
/dev/shm, every local actor copies the weights straight out of RAM in about a millisecond, and the
broadcast carries only a small `weights_ref` notice saying where they are. An actor that cannot open
the file (another host, another user) keeps receiving the full weights on the broadcast.

The file: a header, then two slots, each holding every array at the offset the header's layout gives.
The writer fills the slot that does not hold the newest version, with that slot's sequence counter odd
while it writes (a seqlock). A reader copies the newest complete slot and keeps the copy only if the
counter did not move meanwhile, so a torn write is never applied. The file is created with mode 0600
and removed when the learner stops; its name carries the run id and a random token that the notice
repeats, so an actor never mistakes another run's or another machine's file for its learner's.
"""

from __future__ import annotations

import mmap
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from common import shm_files
from common.shm_files import ALIGN, PAGE, SHM_DIR, Unavailable, available, round_up

__all__ = [
    "SHM_DIR",
    "HeldVersion",
    "SharedWeightsReader",
    "SharedWeightsUnavailable",
    "SharedWeightsWriter",
    "available",
]

MAGIC = b"distdqnW"
FORMAT_VERSION = 1
SLOTS = 2
SLOT_TABLE = 64  # slot k's (sequence, version) int64 pair at SLOT_TABLE + 16 * k
MAX_FILE_BYTES = 16 << 30
ALLOWED_DTYPES = frozenset({"float16", "float32", "float64", "int64", "int32", "uint8", "bool"})
NAME_PATTERN = re.compile(r"distdqn-weights-[0-9a-f]{1,64}-[0-9a-f]{16}")


class SharedWeightsUnavailable(Unavailable):
    """This process cannot use the learner's shared-memory weights; the reason says why."""


class LayoutMismatch(ValueError):
    """Weights of another network than the file was made for."""


class NonFinite(ValueError):
    """Weights holding NaN or infinity: never written, so a reader never loads them."""


def _slot_table(mm: mmap.mmap) -> np.ndarray:
    """Rows of (sequence, version): aligned int64 stores and loads, so neither is ever half-written."""
    return shm_files.array_view(mm, "<i8", (SLOTS, 2), SLOT_TABLE)


def _views(mm: mmap.mmap, data_at: int, slot_bytes: int, arrays: list) -> list[dict[str, np.ndarray]]:
    return [
        {
            name: shm_files.array_view(mm, np.dtype(dtype).newbyteorder("<"), shape, base + offset)
            for name, dtype, shape, offset in arrays
        }
        for base in (data_at + k * slot_bytes for k in range(SLOTS))
    ]


def remove_stale(directory: str = SHM_DIR) -> list[str]:
    """Remove weights files left by learners of this host and user that were killed (see shm_files)."""
    return shm_files.remove_stale(NAME_PATTERN, directory)


@dataclass(frozen=True)
class HeldVersion:
    """A complete slot's arrays in place in the file, for a reader that acts with them without copying.

    They stay that version until the writer begins to overwrite the slot, two versions later, which
    `whole` tells: a forward pass computed from them is sound if `whole()` still holds after it (the
    writer marks the slot odd before it changes any byte, and x86 keeps stores and loads in order)."""

    version: int
    arrays: Mapping[str, np.ndarray]
    sequence: np.ndarray  # the slot's counter, in the file
    expected: int

    def whole(self) -> bool:
        return int(self.sequence[0]) == self.expected


class SharedWeightsWriter:
    """The learner's side: one file per run, written by the control thread at every publication."""

    def __init__(self, run_id: str, arrays: Mapping[str, np.ndarray], directory: str = SHM_DIR) -> None:
        self.run_id = run_id
        self.token = secrets.token_hex(8)
        self.path = os.path.join(directory, f"distdqn-weights-{run_id}-{self.token}")
        layout, offset = [], 0
        for name, array in arrays.items():
            offset = round_up(offset, ALIGN)
            layout.append([name, array.dtype.name, list(array.shape), offset])
            offset += array.nbytes
        self.slot_bytes = round_up(max(offset, 1), PAGE)
        self.layout = layout
        remove_stale(directory)
        layout_map = {"run_id": run_id, "token": self.token, "slot_bytes": self.slot_bytes, "arrays": layout}
        self._file = shm_files.CreatedFile(
            self.path, MAGIC, FORMAT_VERSION, {**layout_map, **shm_files.owner()}, SLOTS * self.slot_bytes
        )
        self.nbytes = self._file.nbytes
        self._mm = self._file.mm
        self._slots = _slot_table(self._mm)
        self._slots[:, 0] = 0
        self._slots[:, 1] = -1  # no version yet
        self._slot_views = _views(self._mm, self._file.data_at, self.slot_bytes, layout)
        self._file.publish_header()  # last: readers check it first
        self._next = 0

    def write(self, version: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Fill the older slot with `arrays` (same names and shapes as at creation, else LayoutMismatch).

        Non-finite floats raise NonFinite and leave the file as it was: readers load straight from the
        file without checking, so the one writer checks for all of them."""
        views = self._slot_views[self._next]
        if set(arrays) != set(views) or any(arrays[name].shape != view.shape for name, view in views.items()):
            raise LayoutMismatch("these weights do not match the shared-memory layout")
        for name, array in arrays.items():
            if array.dtype.kind == "f" and not np.isfinite(array).all():
                raise NonFinite(f"weights v{version}: {name} is not finite")
        seq = int(self._slots[self._next, 0])
        self._slots[self._next, 0] = seq + 1  # odd: being written
        for name, view in views.items():
            np.copyto(view, arrays[name], casting="no")
        self._slots[self._next, 1] = version
        self._slots[self._next, 0] = seq + 2
        self._next ^= 1

    def close(self) -> None:
        """Remove the file; actors still holding it keep their mapping until they let go."""
        if self._file.closed:
            return
        self._slot_views = []
        self._slots = None  # type: ignore[assignment]
        self._file.close()


class SharedWeightsReader:
    """An actor's side: the mapping of one run's file, checked against what the notice said."""

    def __init__(self, path: str, token: str, directory: str = SHM_DIR) -> None:
        if not os.path.basename(path).endswith(token):
            raise SharedWeightsUnavailable(f"not a weights file this actor will open: {path[:200]!r}")
        self._file = shm_files.MappedFile(
            path,
            "weights",
            NAME_PATTERN,
            MAGIC,
            FORMAT_VERSION,
            writable=False,
            max_bytes=MAX_FILE_BYTES,
            directory=directory,
            error=SharedWeightsUnavailable,
        )
        self._mm = self._file.mm
        try:
            self._parse(path, token)
        except BaseException:
            self._file.close()
            raise
        self.path = path
        self.token = token

    def _parse(self, path: str, token: str) -> None:
        layout, data_at = self._file.layout, self._file.data_at
        try:
            run_id, file_token = str(layout["run_id"]), layout["token"]
            slot_bytes, arrays = int(layout["slot_bytes"]), layout["arrays"]
        except Exception as err:
            raise SharedWeightsUnavailable(f"{path}: unreadable layout ({type(err).__name__})") from None
        if file_token != token:
            raise SharedWeightsUnavailable(f"{path}: belongs to another learner")
        if data_at + SLOTS * slot_bytes > self._file.size:
            raise SharedWeightsUnavailable(f"{path}: slots outside the file")
        for spec in arrays:
            name, dtype, shape, offset = spec
            ok = isinstance(name, str) and dtype in ALLOWED_DTYPES and isinstance(offset, int) and offset >= 0
            ok = ok and isinstance(shape, list) and all(isinstance(d, int) and 0 <= d < 2**40 for d in shape)
            if not ok or offset + int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize > slot_bytes:
                raise SharedWeightsUnavailable(f"{path}: bad array layout {str(spec)[:100]}")
        self.run_id = run_id
        self._slots = _slot_table(self._mm)
        self._slot_views = _views(self._mm, data_at, slot_bytes, arrays)

    def newest_version(self) -> int:
        """The newest completely written version (-1 if none): two loads, cheap enough for every step."""
        return max(version if seq % 2 == 0 else -1 for seq, version in self._slots.tolist())  # one numpy call

    def read(self, attempts: int = 3) -> tuple[int, dict[str, np.ndarray]] | None:
        """A private copy of the newest complete version, or None if the writer kept overtaking us."""
        copies: dict[str, np.ndarray] = {}

        def copy(views: Mapping[str, np.ndarray]) -> None:
            copies.clear()
            copies.update((name, view.copy()) for name, view in views.items())

        version = self.read_into(copy, attempts)
        return None if version is None else (version, copies)

    def read_into(self, load: Callable[[Mapping[str, np.ndarray]], None], attempts: int = 3) -> int | None:
        """Hand the newest complete version's arrays, in place in the file, to `load` (which must copy
        what it keeps, e.g. into a network's parameters); its version, or None if the writer overtook
        every attempt, in which case what `load` copied last may be torn and must not be used."""
        for _ in range(attempts):
            seq_before = self._slots[:, 0].copy()
            versions = np.where(seq_before % 2 == 0, self._slots[:, 1], -1)
            slot = int(versions.argmax())
            if versions[slot] < 0:
                return None
            load(self._slot_views[slot])
            if self._slots[slot, 0] == seq_before[slot] and self._slots[slot, 1] == versions[slot]:
                return int(versions[slot])
        return None

    def hold(self, attempts: int = 3) -> HeldVersion | None:
        """The newest complete version in place (no copy), or None if there is none or the writer kept
        overtaking us. The arrays keep the file mapped while anything holds them, even past `close`."""
        for _ in range(attempts):
            rows = self._slots.tolist()  # row by row: each slot's counter is read before its version
            versions = [version if seq % 2 == 0 else -1 for seq, version in rows]
            slot = versions.index(max(versions))
            if versions[slot] < 0:
                return None
            held = HeldVersion(versions[slot], self._slot_views[slot], self._slots[slot, :1], rows[slot][0])
            if held.whole() and self._slots[slot, 1] == held.version:
                return held
        return None

    def close(self) -> None:
        if not self._file.closed:
            self._slot_views = []
            self._slots = None  # type: ignore[assignment]
            self._file.close()
