"""Per-stream delivery accounting: every transition an actor sends ends up stored, rejected, dropped or lost.

Delivery from actor to replay is at-most-once per message (ZeroMQ PUSH over TCP never re-sends). Each
actor process numbers its stream: a `transitions` message carries the actor's random `stream` id,
`sent_before` (transitions it handed to its socket earlier) and `count`. From those the replay server
keeps, per stream, a ledger in which every transition the actor sent lands in exactly one column:

- stored: accepted into the buffer (later eviction does not change this);
- rejected: refused by validation, by reason (the header still names the stream and the count);
- dropped: read but not stored because the server was stopping;
- lost: never arrived, detected as a gap between `sent_before` and what this stream delivered so far, or
  at the actor's `stream_end`, whose `sent` total closes the books. A message that turns up after later
  ones (queued on a connection that was replaced) fills its gap and counts as what it became. Loss
  happens only when a TCP connection breaks (a peer killed, a message over the size limit, which the
  socket discards) or when a restarted server lost what came after its snapshot.

A stream that is closed satisfies `sent == stored + rejected + dropped + lost` exactly, and the actor's
own `dropped` (batches it never sent, at shutdown) completes the actor's total. A stream whose actor was
killed stays open: what reached replay is still accounted exactly, the tail in the dead actor's queue is
not knowable by anyone. The ledger is part of replay snapshots, so a server restored from one detects
as lost what its previous incarnation stored after the snapshot.

The ledger is bounded (MAX_STREAMS): peers choose stream ids, and each one is a record. When full, the
stream closed longest ago is forgotten, its columns kept in `forgotten` (and so in the totals); with
every stream still open, a new stream is refused (the server rejects its messages as too_many_streams).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from common.safe_log import printable

log = logging.getLogger("replay.server")  # refusals read as the server's own lines

MAX_GAPS = 256
MAX_STREAMS = 4096
SUMMARY_LINES = 64  # per-stream lines logged at exit
UNNUMBERED = ""  # producers that send no stream id are accounted per actor index, without loss detection


@dataclass
class StreamRecord:
    actor_index: int
    stream: str
    base: int = -1
    """`sent_before` of the first message this ledger saw (nonzero when replay joined mid-stream)"""
    received_upto: int = 0
    stored: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    dropped: int = 0
    lost: int = 0
    sent: int | None = None
    """the actor's own total, known once its stream_end arrived"""
    actor_dropped: int = 0
    gaps: list[list[int]] = field(default_factory=list)
    """[start, end) ranges counted as lost, oldest first: a late message can still fill one"""

    @property
    def closed(self) -> bool:
        return self.sent is not None

    @property
    def accounted(self) -> int:
        return self.stored + sum(self.rejected.values()) + self.dropped + self.lost

    def balanced(self) -> bool:
        """Everything this ledger saw adds up: sent (or the furthest point reached) equals the columns."""
        upto = self.sent if self.sent is not None else self.received_upto
        return upto - max(self.base, 0) == self.accounted

    def to_dict(self) -> dict[str, Any]:
        return {
            "actor_index": self.actor_index,
            "stream": self.stream,
            "base": max(self.base, 0),
            "received_upto": self.received_upto,
            "stored": self.stored,
            "rejected": dict(self.rejected),
            "dropped": self.dropped,
            "lost": self.lost,
            "sent": self.sent,
            "actor_dropped": self.actor_dropped,
            "gaps": [list(g) for g in self.gaps],
            "closed": self.closed,
            "balanced": self.balanced(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamRecord:
        return cls(
            actor_index=int(data["actor_index"]),
            stream=str(data["stream"]),
            base=int(data["base"]),
            received_upto=int(data["received_upto"]),
            stored=int(data["stored"]),
            rejected=Counter({str(k): int(v) for k, v in data["rejected"].items()}),
            dropped=int(data["dropped"]),
            lost=int(data["lost"]),
            sent=None if data["sent"] is None else int(data["sent"]),
            actor_dropped=int(data["actor_dropped"]),
            gaps=[[int(a), int(b)] for a, b in data.get("gaps", [])],
        )

    def open_gap(self, start: int, end: int) -> None:
        self.lost += end - start
        self.gaps.append([start, end])
        if len(self.gaps) > MAX_GAPS:  # the oldest stays lost for good
            del self.gaps[0]

    def fill_gap(self, start: int, end: int) -> bool:
        """A message that arrived after later ones (a connection replaced while messages were queued on
        the old one): it is no longer lost. False if [start, end) is not inside one gap (a duplicate)."""
        for i, (lo, hi) in enumerate(self.gaps):
            if lo <= start and end <= hi:
                self.gaps[i : i + 1] = [g for g in ([lo, start], [end, hi]) if g[0] < g[1]]
                self.lost -= end - start
                return True
        return False


class Ledger:
    """The per-stream books of one replay server (and of its snapshots)."""

    def __init__(self, max_streams: int = MAX_STREAMS) -> None:
        self.streams: dict[tuple[int, str], StreamRecord] = {}
        self.max_streams = max_streams
        self._closed: dict[tuple[int, str], None] = {}  # keys of closed streams, in the order they closed
        self.forgotten: Counter[str] = Counter()
        """the columns of closed streams dropped from the books to make room, and how many (`streams`)"""

    def _record(self, actor_index: int, stream: str) -> StreamRecord | None:
        key = (actor_index, stream)
        record = self.streams.get(key)
        if record is None:
            if len(self.streams) >= self.max_streams and not self._forget_oldest_closed():
                return None
            record = self.streams[key] = StreamRecord(actor_index, stream)
        return record

    def _forget_oldest_closed(self) -> bool:
        if not self._closed:
            return False
        key = next(iter(self._closed))
        del self._closed[key]
        record = self.streams.pop(key)
        for column, n in _columns(record).items():
            self.forgotten[column] += n
        self.forgotten["streams"] += 1
        return True

    def arrived(self, meta: dict[str, Any], count: int) -> tuple[StreamRecord | None, bool]:
        """Note a message's position in its stream; False when it does not belong there (and no record
        when the ledger is full of open streams).

        A gap before it is counted as lost; a late message that fits a gap fills it. One that overlaps
        what already arrived (a duplicate), or comes after the stream's end, is not part of the stream:
        the caller rejects it under the server-wide counters only. Unnumbered producers only get their
        columns summed.
        """
        record = self._record(int(meta.get("actor_index", -1)), str(meta.get("stream", UNNUMBERED)))
        if record is None:
            return None, False
        if record.stream == UNNUMBERED or "sent_before" not in meta:
            record.base = 0
            record.received_upto += count
            return record, True
        sent_before = int(meta["sent_before"])
        if record.base < 0:
            record.base = record.received_upto = sent_before
        if sent_before < record.received_upto:
            return record, record.fill_gap(sent_before, sent_before + count)
        if record.closed:
            return record, False
        if sent_before > record.received_upto:
            record.open_gap(record.received_upto, sent_before)
        record.received_upto = sent_before + count
        return record, True

    def ended(self, meta: dict[str, Any]) -> StreamRecord | None:
        """The actor's stream_end: its total closes the books, anything not yet seen is lost (None: the
        ledger is full of open streams and this one is new)."""
        record = self._record(int(meta["actor_index"]), str(meta["stream"]))
        if record is None:
            return None
        sent = int(meta["sent"])
        if record.base < 0:
            record.base = record.received_upto = 0
        if sent > record.received_upto:
            record.open_gap(record.received_upto, sent)
            record.received_upto = sent
        record.sent = sent
        record.actor_dropped = int(meta["dropped"])
        self._closed[(record.actor_index, record.stream)] = None
        return record

    def open_streams(self) -> int:
        """Streams that have not sent their stream_end (unnumbered producers never do)."""
        return sum(1 for r in self.streams.values() if not r.closed and r.stream != UNNUMBERED)

    # ---- reporting ----------------------------------------------------------------------------
    def totals(self) -> dict[str, int]:
        out = Counter({column: n for column, n in self.forgotten.items() if column != "streams"})
        for r in self.streams.values():
            out.update(_columns(r))
        return dict(out)

    def to_json(self) -> dict[str, Any]:
        rows = [r.to_dict() for _, r in sorted(self.streams.items())]
        return {"streams": rows, "forgotten": dict(self.forgotten), "totals": self.totals()}

    @staticmethod
    def describe(r: StreamRecord) -> str:
        base = max(r.base, 0)
        head = f"actor {r.actor_index} stream {printable(r.stream) if r.stream else '-'}"  # peer text: escaped
        sent = f"sent {r.sent - base}" if r.sent is not None else f"open, received {r.received_upto - base}"
        rejected = sum(r.rejected.values())
        return (
            f"{head}: {sent} = stored {r.stored} + rejected {rejected} + dropped {r.dropped} + lost {r.lost}"
            f"{'' if r.balanced() else ' (UNBALANCED)'}; the actor dropped {r.actor_dropped} unsent"
        )

    def summary_lines(self, limit: int = SUMMARY_LINES) -> list[str]:
        """One line per stream, the first `limit` of them (accounting.json has every row)."""
        rows = sorted(self.streams.items())
        lines = [self.describe(r) for _, r in rows[:limit]]
        if len(rows) > limit:
            lines.append(f"... and {len(rows) - limit} more streams (see accounting.json)")
        return lines

    # ---- snapshots: plain bytes, never pickle -------------------------------------------------
    def to_array(self) -> np.ndarray:
        data = {"streams": self.to_json()["streams"], "forgotten": dict(self.forgotten)}
        return np.frombuffer(json.dumps(data).encode(), dtype=np.uint8).copy()

    @classmethod
    def from_array(cls, array: np.ndarray) -> Ledger:
        ledger = cls()
        data = json.loads(bytes(np.asarray(array, dtype=np.uint8)).decode())
        if isinstance(data, list):  # snapshots from before the ledger was bounded
            data = {"streams": data, "forgotten": {}}
        ledger.forgotten = Counter({str(k): int(v) for k, v in data["forgotten"].items()})
        for row in data["streams"]:
            record = StreamRecord.from_dict(row)
            ledger.streams[(record.actor_index, record.stream)] = record
        for key, record in ledger.streams.items():
            if record.closed:
                ledger._closed[key] = None
        while len(ledger.streams) > ledger.max_streams and ledger._forget_oldest_closed():
            pass
        return ledger


def _columns(r: StreamRecord) -> dict[str, int]:
    return {
        "stored": r.stored,
        "rejected": sum(r.rejected.values()),
        "dropped": r.dropped,
        "lost": r.lost,
        "actor_dropped": r.actor_dropped,
    }


class Books:
    """What one replay server refused, by reason, and its per-stream ledger: a refused message that
    names its stream is also counted in that stream's row, so every transition sent lands in a column."""

    def __init__(self, max_insert: int, ledger: Ledger | None = None) -> None:
        self.max_insert = max_insert
        self.rejected: Counter[str] = Counter()
        self.ledger = ledger if ledger is not None else Ledger()

    def reject(
        self, reason: str, detail: object, meta: dict | None = None, *, record: StreamRecord | None = None, count=0
    ) -> None:
        """Count a refused message by reason, and its transitions in its stream's ledger when it names one.

        `meta` comes from a message whose header was valid but whose arrays were not: its own `count`
        (bounded by the largest insert) says how many transitions the stream loses to the rejection.
        """
        self.rejected[reason] += 1
        claimed = meta.get("count") if meta is not None else None
        attributable = isinstance(claimed, int) and 0 <= claimed <= self.max_insert and meta.get("sent_before", 0) >= 0
        if record is None and attributable:
            record, in_order = self.ledger.arrived(meta, claimed)
            record, count = (record, claimed) if in_order and record is not None else (None, 0)
        if record is not None:
            record.rejected[reason] += count
        total = sum(self.rejected.values())
        if total <= 20 or total % 1000 == 0:
            log.warning("rejected a message (%s): %s [%d rejected so far]", reason, detail, total)
