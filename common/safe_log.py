"""Logging what peers tell us without letting them write our logs.

A peer chooses its host name, its role string and the text of whatever it sends; logged as is, a
megabyte of it is a megabyte of log, and a newline in it starts a line that looks like our own
("SOLVED ..."). `printable` bounds and escapes such text; `PeerWarnings` caps how many lines each peer
(and all of them together) may cause, so a flood of bad messages costs a few lines and a count.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

MAX_TEXT = 64


def printable(value: Any, limit: int = MAX_TEXT) -> str:
    """`value` as one short log-safe token: repr-escaped (no newline or control character survives),
    cut to `limit` characters with a marker saying how long it was."""
    text = value if isinstance(value, str) else str(value)
    if len(text) > limit:
        return f"{text[:limit]!r}...({len(text)} chars)"
    return repr(text)


class _Bucket:
    __slots__ = ("tokens", "stamp", "suppressed")

    def __init__(self, tokens: float, stamp: float) -> None:
        self.tokens = tokens
        self.stamp = stamp
        self.suppressed = 0

    def take(self, now: float, capacity: float, rate: float) -> bool:
        self.tokens = min(capacity, self.tokens + (now - self.stamp) * rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.suppressed += 1
        return False


class PeerWarnings:
    """Rate-limited warnings: per peer a burst of `burst` lines then one every `interval_s`, and at most
    `total_per_s` lines a second over all peers. A line that goes out says how many were held back."""

    def __init__(
        self,
        logger: logging.Logger,
        *,
        burst: int = 3,
        interval_s: float = 10.0,
        total_per_s: float = 2.0,
        total_burst: int = 20,
        peers: int = 1024,
    ) -> None:
        self.log = logger
        self.burst, self.rate = burst, 1.0 / interval_s
        self.total_rate, self.total_burst = total_per_s, total_burst
        self.max_peers = peers
        self._peers: OrderedDict[bytes, _Bucket] = OrderedDict()
        self._all = _Bucket(total_burst, time.monotonic())
        self.suppressed = 0

    def warning(self, peer: bytes, message: str, *args: Any, exc_info: bool = False) -> bool:
        """Log `message % args` unless this peer or everyone is over the limit; True if it was logged."""
        now = time.monotonic()
        bucket = self._peers.pop(peer, None) or _Bucket(self.burst, now)
        self._peers[peer] = bucket  # most recent last; the least recent is forgotten first
        while len(self._peers) > self.max_peers:
            self._peers.popitem(last=False)
        if not bucket.take(now, self.burst, self.rate):
            self.suppressed += 1
            return False
        if not self._all.take(now, self.total_burst, self.total_rate):
            bucket.suppressed += 1
            self.suppressed += 1
            return False
        held = bucket.suppressed
        bucket.suppressed = 0
        suffix = f" [{held} similar lines from this peer suppressed]" if held else ""
        self.log.warning(message + suffix, *args, exc_info=exc_info)
        return True
