"""The replay server's queue of sample requests waiting to be served, bounded per peer and in total.

Why bounded: a learner (or anyone who can reach the ROUTER socket) could otherwise queue requests
without limit, each holding memory until served. Why not first-in-first-out only: a request that cannot
be served now (a batch larger than the rate limiter allows at the moment) must not hold back later
ones that can; requests that can never be served are refused before they get here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

MAX_PER_PEER = 64
MAX_TOTAL = 1024


@dataclass
class PendingSample:
    identity: bytes
    batch_size: int
    beta: float
    since: float
    shm: tuple[str, str, int] | None = None  # the learner's batch file (path, token) and the slot to fill
    with_mass: bool = False  # the reply carries the buffer's priority mass and size (sharded sampling)


class PendingSamples:
    def __init__(self, per_peer: int = MAX_PER_PEER, total: int = MAX_TOTAL) -> None:
        self.per_peer = per_peer
        self.total = total
        self._queue: list[PendingSample] = []
        self._by_peer: Counter[bytes] = Counter()

    def __len__(self) -> int:
        return len(self._queue)

    def __iter__(self) -> Iterator[PendingSample]:
        return iter(self._queue)

    def add(self, request: PendingSample) -> str | None:
        """Queue the request, or return the reason it is refused (the caller counts and answers it)."""
        if self._by_peer[request.identity] >= self.per_peer:
            return "too_many_pending"
        if len(self._queue) >= self.total:
            return "pending_full"
        self._queue.append(request)
        self._by_peer[request.identity] += 1
        return None

    def take_ready(self, can_serve: Callable[[int], bool]) -> Iterator[PendingSample]:
        """The oldest request that can be served now, then the next one, re-checked after each is served
        (serving changes what the limiter allows); requests that must wait keep their place."""
        i = 0
        while i < len(self._queue):
            request = self._queue[i]
            if not can_serve(request.batch_size):
                i += 1
                continue
            del self._queue[i]
            self._by_peer[request.identity] -= 1
            if not self._by_peer[request.identity]:
                del self._by_peer[request.identity]
            yield request
