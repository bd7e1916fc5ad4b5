"""The replay server's intake: read inserts from the ingest sockets, check them, book them in their
stream's ledger, and store what the rate limiter lets in.

Backpressure is ZeroMQ's own: while the limiter holds an insert back (`held`), the server stops reading
the ingest sockets, the actors' send queues fill to their high-water mark, and the actors wait.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np
import zmq

from common.wire import DecodeError, Message, decode
from replay.accounting import Books, StreamRecord
from replay.buffer import ReplayBuffer
from replay.frame_storage import FrameReplayBuffer
from replay.insert_checks import InsertChecks
from replay.rate_limiter import SampleToInsertRatio
from replay.storage import storage_batch

log = logging.getLogger("replay.server")

INGEST_KINDS = ("transitions", "frame_transitions", "stream_end")
STREAM_LINES = 100  # "stream closed" lines logged one by one; after that one in a thousand
DRAIN_QUEUED_MAX = 4096  # messages read per ingest socket at a stop after the grace, so a flood cannot hold it
POLL_MS = 50

Insert = tuple[Message, int, StreamRecord]


class Ingest:
    def __init__(
        self,
        buffer: ReplayBuffer | FrameReplayBuffer,
        limiter: SampleToInsertRatio | None,
        checks: InsertChecks,
        books: Books,
        sockets: list[zmq.Socket],
        stored_by_actor: Counter[int] | None = None,
    ) -> None:
        self.buffer, self.limiter, self.checks, self.books = buffer, limiter, checks, books
        self.sockets = sockets
        self.stored_by_actor: Counter[int] = stored_by_actor if stored_by_actor is not None else Counter()
        self.held: Insert | None = None  # a decoded insert waiting for the limiter
        self.streams_closed = 0

    def can_insert(self, count: int) -> bool:
        if self.limiter is None:
            return True
        return self.limiter.can_insert(self.buffer.inserted_total, self.buffer.sampled_total, count)

    def wants_input(self) -> bool:
        return self.held is None or self.can_insert(self.held[1])

    def read(self, budget: int) -> None:
        """Read and store up to `budget` messages, stopping as soon as the limiter says wait."""
        for _ in range(budget):
            if self.held is not None:
                if not self.can_insert(self.held[1]):
                    return
                held, self.held = self.held, None
                self._store(*held)
            frames = self._next_frames()
            if frames is None:
                return
            try:
                decoded = self.decode(frames)
            except Exception as err:  # one message never ends the server: count it and go on
                self.books.reject("internal_error", f"{type(err).__name__}: {str(err)[:200]!r}")
                continue
            if decoded is not None:
                self.held = decoded

    def _next_frames(self) -> list | None:
        for sock in self.sockets:
            try:
                return sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                continue
        return None

    def decode(self, frames: list) -> Insert | None:
        """A valid insert, or None after counting the message as rejected (or closing a stream)."""
        reject = self.books.reject
        try:
            msg = decode(frames, expect=INGEST_KINDS)
        except DecodeError as err:
            reject(err.reason, err, err.meta)
            return None
        if msg.kind == "stream_end":
            self._end_stream(msg.meta)
            return None
        a, meta = msg.arrays, msg.meta
        count = a["action"].shape[0] if a["action"].ndim else -1
        if count < 0 or meta.get("count", count) != count or meta.get("sent_before", 0) < 0:
            reject("bad_count", f"count {meta.get('count')} for {count} rows, from actor {meta['actor_index']}")
            return None
        record, in_order = self.books.ledger.arrived(meta, count)
        if record is None:
            reject("too_many_streams", f"ledger full of open streams, from actor {meta['actor_index']}")
            return None
        if not in_order:
            reject("out_of_order", f"actor {meta['actor_index']} stream {meta.get('stream')}")
            return None
        problem = self.checks.problem(msg, count)
        if problem is not None:
            reject(*problem, record=record, count=count)
            return None
        return msg, count, record

    def _store(self, msg: Message, count: int, record: StreamRecord) -> None:
        # An actor's priority counts for at most the highest priority so far, which only the learner's
        # updates raise: otherwise one peer's inflated priorities would claim most of every batch.
        priority = np.minimum(msg.arrays["priority"], np.float32(self.buffer.max_priority))
        try:
            self.buffer.add(storage_batch(self.buffer, msg), priority)
        except ValueError as err:  # the decoder and the checks above should leave nothing for here
            self.books.reject("bad_batch", err, record=record, count=count)
            return
        self.stored_by_actor[msg.meta["actor_index"]] += count
        record.stored += count

    def _end_stream(self, meta: dict) -> None:
        ledger = self.books.ledger
        record = ledger.ended(meta)
        if record is None:
            self.books.reject("too_many_streams", f"{ledger.max_streams} streams open, stream_end of a new one")
            return
        self.streams_closed += 1
        if self.streams_closed <= STREAM_LINES or self.streams_closed % 1000 == 0:  # churn cannot fill the log
            log.info("stream closed: %s [%d closed so far]", ledger.describe(record), self.streams_closed)

    # ---- at a stop ----------------------------------------------------------------------------
    def drain_at_stop(self, grace_s: float) -> None:
        """Close the books: what is held or still arrives is dropped (counted), and late stream_ends land.

        Actors stopping at the same time as replay flush and send their stream_end last, so replay keeps
        reading every ingest socket until no stream is open or `grace_s` has passed; a stream still open
        then (its actor died, or never heard the stop) stays open in the ledger.
        """
        ledger = self.books.ledger
        if self.held is not None:
            _msg, count, record = self.held
            record.dropped += count
            self.held = None
        poller = zmq.Poller()
        for sock in self.sockets:
            poller.register(sock, zmq.POLLIN)
        deadline = time.monotonic() + grace_s
        while ledger.open_streams() and (left := deadline - time.monotonic()) > 0:
            for sock, _event in poller.poll(max(1, min(POLL_MS, int(left * 1000)))):
                self._drain_one(sock)
        for sock in self.sockets:  # what is queued already is counted too, however the wait ended (bounded)
            for _ in range(DRAIN_QUEUED_MAX):
                if not self._drain_one(sock, zmq.NOBLOCK):
                    break
        if ledger.open_streams():
            log.info("stopped with %d streams still open after %.1f s", ledger.open_streams(), grace_s)
        for line in ledger.summary_lines():
            log.info("accounting: %s", line)

    def _drain_one(self, sock: zmq.Socket, flags: int = 0) -> bool:
        try:
            frames = sock.recv_multipart(flags, copy=False)
        except zmq.Again:
            return False
        try:
            decoded = self.decode(frames)
        except Exception as err:  # one message never ends the server: count it and go on
            self.books.reject("internal_error", f"{type(err).__name__}: {str(err)[:200]!r}")
            return True
        if decoded is not None:
            _msg, count, record = decoded
            record.dropped += count
        return True
