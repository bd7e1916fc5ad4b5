"""One replay server (one shard) as the learner's replay client sees it: a socket, a batch file, the
requests in flight there and what the server last said.

The client (learner/replay_client.py) decides where requests go and hands batches to the update loop;
a link only talks to its server: it sends what it is told, decodes each reply into a batch or news
(statistics, a refusal), and starts over on a fresh socket and batch file when its requests are lost
or its server restarted. Kept apart so that K shards are K links and the client's logic is the same.

A sharded run asks every server for its priority mass (`with_mass`, in `stats_request` and `sample`):
the client chooses each batch's shard by it (learner/shard_choice.py). Older servers refuse the key,
so it is only sent when the run has shards.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import zmq

from common.config import RunConfig
from common.envs import EnvSpec
from common.monitor import ConnectionMonitor
from common.security import ClientSecurity, secure_client
from common.shards import shard_config, shard_label
from common.shared_batches import BatchFile
from common.sockets import connect, make_socket, send_frames
from common.wire import DecodeError, Encoder, Message, decode
from learner.batch import Batch, to_batch
from learner.batch_slots import BatchSlots

log = logging.getLogger("learner.replay_client")

STATS_PERIOD_S = 1.0
ERROR_PAUSE_S = 0.5  # after replay refuses a request, before asking again
MAX_SAMPLE_TIMEOUT_S = 60.0
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: enum arithmetic costs microseconds a call


class ReplayLink:
    def __init__(
        self,
        config: RunConfig,
        host: str,
        shard: int,
        *,
        spec: EnvSpec | None,
        ctx: zmq.Context,
        curve: ClientSecurity | None,
        pin_memory: bool,
        threaded: bool,
    ) -> None:
        self.config, self.host, self.shard, self.spec = config, host, shard, spec
        self.ctx, self.curve, self.pin_memory, self.threaded = ctx, curve, pin_memory, threaded
        self.sharded = config.replay.shards > 1
        self.label = shard_label(shard, config.replay.shards)
        self.port = config.net.shard_ports(shard)[1]
        self.min_size = shard_config(config, shard).replay.min_size  # what this server serves from
        self.sock: zmq.Socket | None = None
        self.sent_at: deque[float] = deque()  # when each request in flight was sent, oldest first
        self.timeout = config.learner.sample_timeout_s
        self.hold_until = 0.0  # no new requests before this (the server just refused one)
        self.beta = config.replay.beta_start  # the client's, for the next requests
        self.next_stats = 0.0
        self.stats: dict = {}
        self.stats_at = 0.0  # when replay_stats last arrived on the current socket
        self.heard_at = 0.0  # when any reply last arrived on the current socket
        self.mass = 0.0  # the newest priority mass and size the server reported (sharded runs)
        self.stored = 0
        self.slots: BatchSlots | None = None  # the batch file in shared memory, when the server can write it
        self.requests_lost = 0
        self.decode_errors = 0
        self.batches_by_shared_memory = 0
        self.batches_by_socket = 0
        self.stale_batches = 0  # replies for a batch file given up since (see reset)
        self.restarted = False  # set by a reply that shows a restarted server; the client then resets
        self.in_use = True  # False while the client leaves this shard out of sampling (it fell silent)
        self._connections: ConnectionMonitor | None = None
        self._handlers: dict[str, Callable[[Message], Batch | None]] = {
            "batch": self._on_batch,
            "batch_ref": self._on_batch_ref,
            "replay_stats": self._on_stats,
            "error": self._on_error,
        }

    # ---- the socket ---------------------------------------------------------------------------
    def open(self) -> None:
        net = self.config.net
        self.sock = make_socket(self.ctx, zmq.DEALER, hwm=1024, max_message_bytes=net.max_message_mb << 20)
        secure_client(self.sock, self.curve)
        self._connections = ConnectionMonitor(log)
        self._connections.watch(self.sock, f"{self.label} sampling")
        connect(self.sock, self.host, self.port)
        self.encode = Encoder("learner")
        self.next_stats = 0.0
        self.stats_at = self.heard_at = 0.0
        self.slots = BatchSlots.open(self.config, self.spec)

    def close(self) -> None:
        if self.sock is not None:
            assert self._connections is not None
            self._connections.close()
            self.sock.close(linger=200)
            self.sock = None
        if self.slots is not None:
            self.slots.close()
            self.slots = None

    def reset(self) -> None:
        """Forget the requests in flight and start over on a new socket and batch file: late replies go
        to the old socket's identity, late batches into the old file, so nothing stale reaches a batch."""
        self.sent_at.clear()
        self.restarted = False
        self.close()
        self.open()

    @property
    def batch_file(self) -> BatchFile | None:
        return self.slots.file if self.slots is not None else None

    def poll_connections(self) -> None:
        if self._connections is not None:
            self._connections.poll()

    def has_input(self) -> bool:
        return self.sock is not None and bool(self.sock.get(_EVENTS) & _POLLIN)

    # ---- what it sends ------------------------------------------------------------------------
    def request(self, now: float) -> None:
        """One sample request (into a free slot of the batch file, when there is one)."""
        assert self.sock is not None
        meta: dict = {"batch_size": self.config.learner.batch_size, "beta": float(self.beta)}
        if self.sharded:
            meta["with_mass"] = True
        if self.slots is not None:
            meta.update(self.slots.take())
        send_frames(self.sock, self.encode("sample", meta))
        self.sent_at.append(now)

    def send_priorities(self, index: np.ndarray, ids: np.ndarray, priority: np.ndarray) -> None:
        assert self.sock is not None
        frames = self.encode("priorities", arrays={"index": index, "id": ids, "priority": priority})
        send_frames(self.sock, frames)

    def send_stats_request(self, now: float) -> None:
        assert self.sock is not None
        self.sock.send_multipart(self.encode("stats_request", {"with_mass": True} if self.sharded else None))
        self.next_stats = now + STATS_PERIOD_S

    def lost(self, now: float) -> bool:
        """Whether the oldest request in flight went unanswered too long (then the caller resets this
        link). A server still filling up is not losing requests: their wait starts again."""
        if not self.sent_at or now - self.sent_at[0] <= self.timeout:
            return False
        recent = now - self.stats_at < 2.0 * STATS_PERIOD_S
        if recent and self.stats.get("size", 0) < self.min_size:
            self.sent_at = deque(now for _ in self.sent_at)
            return False
        self.requests_lost += len(self.sent_at)
        log.warning(
            "no answer from %s to a sample request for %.0f s (it last said size %s, %s); taking the %d in "
            "flight as lost and sending them again",
            self.label,
            now - self.sent_at[0],
            self.stats.get("size", "unknown"),
            f"waiting for {self.stats['waiting']}" if self.stats.get("waiting") else "not waiting",
            len(self.sent_at),
        )
        self.timeout = min(2 * self.timeout, MAX_SAMPLE_TIMEOUT_S)
        return True

    def can_serve(self) -> bool:
        """Whether a sharded run may send this server requests: it said it holds a batch's worth."""
        return self.stats_at > 0 and self.stored >= self.min_size and self.mass > 0

    # ---- replies, one handler per kind --------------------------------------------------------
    def receive(self, frames: list) -> Batch | None:
        try:
            msg = decode(frames, expect=tuple(self._handlers))
        except DecodeError as err:
            self.decode_errors += 1
            log.warning("bad reply from %s: %s", self.label, err)
            return None
        self.heard_at = time.monotonic()
        return self._handlers[msg.kind](msg)

    def _answered(self, batch: bool) -> None:
        if self.sent_at:
            self.sent_at.popleft()
        if batch:
            self.timeout = self.config.learner.sample_timeout_s

    def _note_mass(self, meta: dict) -> None:
        if not self.sharded:  # (only a sharded run asks for them)
            return
        mass, stored = meta.get("mass"), meta.get("stored")
        if mass is not None and 0 <= mass < float("inf"):
            self.mass = float(mass)
        if stored is not None:
            self.stored = int(stored)

    def _on_batch(self, msg: Message) -> Batch | None:
        self._answered(batch=True)
        self._note_mass(msg.meta)
        if "shm_refused" in msg.meta and self.slots is not None:
            log.info(
                "%s cannot write this learner's batch file, so batches come over the socket: %s",
                self.label,
                msg.meta["shm_refused"],
            )
            self.slots.close()
            self.slots = None
        self.batches_by_socket += 1
        batch = to_batch(msg.arrays, pin_memory=self.pin_memory, copy=False)
        batch.shard = self.shard
        return batch

    def _on_batch_ref(self, msg: Message) -> Batch | None:
        self._answered(batch=True)
        slots, slot = self.slots, msg.meta["slot"]
        if slots is None or not slots.names_ours(msg.meta):
            self.stale_batches += 1  # for a batch file given up since: its slot is not ours to read
            return None
        if msg.meta["size"] != slots.file.batch_size:
            self.decode_errors += 1
            log.warning(
                "%s filled slot %d with %d transitions, not %d",
                self.label,
                slot,
                msg.meta["size"],
                slots.file.batch_size,
            )
            return None
        self._note_mass(msg.meta)
        if self.batches_by_shared_memory == 0:
            log.info("sampled batches from %s arrive in shared memory (%s)", self.label, slots.file.path)
        self.batches_by_shared_memory += 1
        batch = slots.tensors.get(slot)
        if batch is None:
            batch = self._slot_batch(slots, slot)
        return batch

    def _slot_batch(self, slots: BatchSlots, slot: int) -> Batch:
        """Tensors over a slot of the batch file. A thread hands batches over a queue, not in step with
        get_batch, so it copies the slot's arrays (into pinned memory when pinning anyway) and frees the
        slot at once; otherwise the tensors are the slot, made once, and it is freed by the next get_batch."""
        batch = to_batch(slots.file.views(slot), pin_memory=self.pin_memory, copy=self.threaded)
        batch.shard = self.shard
        if self.threaded:
            slots.free.append(slot)
        else:  # the same memory every time: tensors over it need making once
            batch.slot = slot
            slots.tensors[slot] = batch
        return batch

    def _on_stats(self, msg: Message) -> None:
        if msg.meta["inserted"] < self.stats.get("inserted", 0):
            log.warning("%s restarted; re-sending sample requests", self.label)  # it forgot our requests
            self.restarted = True
        self.stats = msg.meta
        self.stats_at = time.monotonic()
        self.stored = int(msg.meta["size"])
        self._note_mass(msg.meta)
        return None

    def _on_error(self, msg: Message) -> None:
        self._answered(batch=False)
        self.hold_until = time.monotonic() + ERROR_PAUSE_S
        log.error("%s refused a request: %s", self.label, msg.meta)
        return None
