"""When the replay server snapshots, and what goes into one.

Snapshots (timer, `snapshot_request`, clean exit) copy the server's state between loop iterations,
where it is consistent by construction, and write the copy from a background thread, so ingest pauses
only for the copy, never for the disk. One write at a time; requests that arrive during a write are
answered by the next one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.errors import StartupError
from replay.accounting import Ledger
from replay.buffer import ReplayBuffer
from replay.frame_storage import FrameReplayBuffer
from replay.snapshot import SnapshotInfo, load_snapshot, write_snapshot

log = logging.getLogger(__name__)

ACTOR_COUNTS_KEY = "server.stored_by_actor"  # (K, 2) int64 rows of (actor index, transitions stored)
LEDGER_KEY = "server.ledger"  # the per-stream accounting as JSON bytes (uint8)

Reply = Callable[[bytes, str, dict], None]


def server_state(buffer: ReplayBuffer | FrameReplayBuffer, stored_by_actor: Counter[int], ledger: Ledger) -> dict:
    """The buffer's state (copies, not views) plus the per-actor counts and the ledger, all plain arrays."""
    state: dict = buffer.state_dict()
    rows = sorted(stored_by_actor.items())
    state[ACTOR_COUNTS_KEY] = np.array(rows, dtype=np.int64).reshape(-1, 2)
    state[LEDGER_KEY] = ledger.to_array()
    return state


def restore_server_state(
    directory: Path, buffer: ReplayBuffer | FrameReplayBuffer
) -> tuple[Counter[int], Ledger | None] | None:
    """Load the newest readable snapshot into `buffer`: (per-actor counts, the ledger if it had one), or
    None when there is none (a warning); one that does not fit this config is fatal."""
    found = load_snapshot(directory)
    if found is None:
        log.warning("--restore: no readable snapshot in %s; starting empty", directory)
        return None
    state, path = found
    try:
        counts = np.asarray(state.get(ACTOR_COUNTS_KEY, np.zeros((0, 2), np.int64)))
        if counts.dtype != np.int64 or counts.ndim != 2 or counts.shape[1] != 2:
            raise ValueError(f"{ACTOR_COUNTS_KEY} must be int64 (K, 2), got {counts.dtype}{counts.shape}")
        buffer.load_state_dict(state)  # checks capacity, mode, alpha and every field's dtype and shape
    except ValueError as err:
        raise StartupError(
            f"replay snapshot {path} does not match this server's config (restore it with the settings it "
            f"was taken with, or start without --restore): {err}"
        ) from None
    ledger = None
    if LEDGER_KEY in state:
        try:
            ledger = Ledger.from_array(state[LEDGER_KEY])
        except (ValueError, KeyError, TypeError) as err:
            raise StartupError(f"replay snapshot {path}: unreadable accounting ledger: {err}") from None
    log.info(
        "restored %d transitions from %s (%d inserted, %d sampled so far)",
        buffer.size,
        path,
        buffer.inserted_total,
        buffer.sampled_total,
    )
    return Counter({int(actor): int(n) for actor, n in counts}), ledger


class SnapshotJob:
    """One snapshot write, run by a background thread (or inline at exit); the loop replies to `waiters`."""

    def __init__(self, directory: Path, state: dict, waiters: list[bytes], copy_s: float, reason: str) -> None:
        self.waiters = waiters
        self.reason = reason
        self.copy_s = copy_s
        self.info: SnapshotInfo | None = None
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self.write, args=(directory, state), name="replay-snapshot", daemon=True)

    def write(self, directory: Path, state: dict) -> None:
        try:
            self.info = write_snapshot(directory, state)
        except Exception as err:  # a full disk must not kill the server: report it to the waiters instead
            self.error = err


class SnapshotSchedule:
    """Starts snapshots on the timer or on request and answers the requesters when each is written."""

    def __init__(self, directory: Path, interval_s: float, state: Callable[[], dict], reply: Reply) -> None:
        self.directory = directory
        self.interval_s = interval_s
        self._state = state
        self._reply = reply
        self._next = time.monotonic() + interval_s
        self._waiters: list[bytes] = []
        self._job: SnapshotJob | None = None

    def request(self, identity: bytes) -> None:
        self._waiters.append(identity)  # answered by the next snapshot to start, not a running one

    def tick(self) -> None:
        """Collect a finished write, then start one if asked to or the timer is due."""
        job = self._job
        if job is not None:
            if job.thread.is_alive():
                return
            self._job = None
            self._finish(job)
        timer_due = self.interval_s > 0 and time.monotonic() >= self._next
        if self._waiters or timer_due:
            self._job = self._start("request" if self._waiters else "timer")

    def at_exit(self) -> None:
        """At a clean stop: finish the write in progress, then write the final state inline."""
        job = self._job
        if job is not None:
            job.thread.join()
            self._job = None
            self._finish(job)
        if self.interval_s > 0 or self._waiters:
            self._finish(self._start("exit", background=False))

    def _start(self, reason: str, *, background: bool = True) -> SnapshotJob:
        start = time.monotonic()
        state = self._state()  # the only part that holds up the loop: a memcpy of the storage
        job = SnapshotJob(self.directory, state, self._waiters, time.monotonic() - start, reason)
        self._waiters = []
        self._next = start + self.interval_s
        if background:
            job.thread.start()
        else:
            job.write(self.directory, state)
        return job

    def _finish(self, job: SnapshotJob) -> None:
        if job.info is None:
            log.error("snapshot (%s) to %s failed: %s", job.reason, self.directory, job.error)
            detail = f"{type(job.error).__name__}: {job.error}"[:200]
            for identity in job.waiters:
                self._reply(identity, "error", {"reason": "snapshot_failed", "detail": detail})
            return
        info = job.info
        log.info(
            "snapshot (%s): %d transitions (%d inserted so far), %.1f MB to %s in %.2f s (copy %.3f s)",
            job.reason,
            info.transitions,
            info.inserted,
            info.bytes / 1e6,
            info.path,
            info.seconds,
            job.copy_s,
        )
        meta = {
            "path": str(info.path),
            "transitions": info.transitions,
            "inserted": info.inserted,
            "bytes": info.bytes,
            "seconds": info.seconds,
        }
        for identity in job.waiters:
            self._reply(identity, "snapshot_done", meta)
