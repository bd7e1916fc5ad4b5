"""The learner's side of the replay server: `prefetch` sample requests always in flight, priorities back.

The update loop should never wait on the network when data exists. ZeroMQ's own I/O thread receives
the replies in the background either way; what remains is decoding them into tensors and sending
priority updates, and where that runs depends on the device:

- CUDA: in a thread of its own, which turns replies into pinned host memory (so the copy to the device
  overlaps the update) while the update loop waits on the GPU with the GIL released, and queues them.
  Priority updates reach it through a queue while their copy from the GPU is still in flight, and go
  out once it has landed: the update loop never waits for the GPU to finish a step.
- CPU: inline, between updates. A CPU update holds the GIL for much of its time, and a second Python
  thread doing the same work would make the update loop wait for the GIL (docs/benchmarks.md).

The ZeroMQ socket is used by one thread only (sockets are not thread-safe).

A request unanswered for `learner.sample_timeout_s` is taken as lost, whatever replay's statistics say
(a connection that heartbeats dropped while replay was stopped takes its requests with it, and replay
then reports itself waiting for samples). The client then starts over on a fresh socket and a fresh
batch file: replay routes a late reply by the old socket's identity, which nobody holds any more, and
writes a late batch into the old file, which no batch in use is part of. Nothing stale can reach the
update loop, so requests need no ids of their own. The one report trusted is that replay holds fewer
than `replay.min_size` transitions, fresh from the current connection: then no request can be served,
and sending it again would only queue another.

With replay on the same host, each request names a slot of the learner's batch file in /dev/shm
(`learner.batch_slots`, over common/shared_batches.py) and replay writes the sampled batch straight into
it: an Atari batch then crosses no socket, and the reply is a header to decode, not eight arrays. On a
CPU the batch's tensors are the slot itself, so they stay valid until the next `get_batch`; on CUDA (and
in the threaded mode) they are copied out at once and the slot is free again (`learner.batch`). Each
reply kind has its handler in one table.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch
import zmq

from common.config import RunConfig
from common.envs import EnvSpec
from common.monitor import ConnectionMonitor
from common.security import ClientSecurity, secure_client
from common.shared_batches import BatchFile
from common.sockets import connect, make_socket, send_frames
from common.wire import DecodeError, Encoder, Message, decode
from learner.batch import Batch, to_batch
from learner.batch_slots import BatchSlots

log = logging.getLogger(__name__)

STATS_PERIOD_S = 1.0
MAX_SAMPLE_TIMEOUT_S = 60.0
ERROR_PAUSE_S = 0.5  # after replay refuses a request, before asking again
_EVENTS, _POLLIN = int(zmq.EVENTS), int(zmq.POLLIN)  # plain ints: enum arithmetic costs microseconds a call
MONITOR_PERIOD_S = 0.1  # connection events are logged, not acted on: no need to look every update
PUT_WAIT_S = 0.01  # the longest a priority update waits while the batch queue is full


class Ready(Protocol):
    """What send_priorities needs of a torch.cuda.Event: whether the work before it has finished."""

    def query(self) -> bool: ...

    def synchronize(self) -> None: ...


_Priorities = tuple[np.ndarray, np.ndarray, "np.ndarray | torch.Tensor", "Ready | None"]


class ReplayClient:
    def __init__(
        self,
        config: RunConfig,
        host: str,
        *,
        pin_memory: bool,
        ctx: zmq.Context,
        curve: ClientSecurity | None = None,
        threaded: bool | None = None,
        spec: EnvSpec | None = None,
    ) -> None:
        """`spec` (the run's observations) lets batches come through shared memory when replay is local."""
        self.config = config
        self.spec = spec
        self.curve = curve
        self.host = host
        self.pin_memory = pin_memory
        self.threaded = pin_memory if threaded is None else threaded  # see the module docstring
        self.ctx = ctx
        self.batches: queue.Queue[Batch] = queue.Queue(maxsize=config.learner.prefetch)  # threaded only
        self.priorities: queue.Queue[_Priorities] = queue.Queue()  # threaded only (and before start)
        self._unsent_priorities: deque[_Priorities] = deque()  # taken from the queue, copy not yet landed
        self.beta = config.replay.beta_start
        self.stats: dict = {}
        self.decode_errors = 0
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: zmq.Socket | None = None
        self._ready: deque[Batch] = deque()  # decoded, not yet handed out (or queued, when threaded)
        self._sent_at: deque[float] = deque()  # when each request in flight was sent, oldest first
        self._timeout = config.learner.sample_timeout_s
        self._hold_until = 0.0  # no new requests before this (replay just refused one)
        self._next_stats = 0.0
        self._next_monitor = 0.0
        self.requests_lost = 0
        self._stats_at = 0.0  # when replay_stats last arrived on the current socket
        self._slots: BatchSlots | None = None  # the batch file in shared memory, when replay can write it
        self._held_slot = -1  # the slot of the batch the update loop has now (CPU, shared memory)
        self.batches_by_shared_memory = 0
        self.batches_by_socket = 0
        self.stale_batches = 0  # replies for a batch file given up since (see _reset_requests)
        # One handler per reply kind from replay.
        self._handlers: dict[str, Callable[[Message], None]] = {
            "batch": self._on_batch,
            "batch_ref": self._on_batch_ref,
            "replay_stats": self._on_stats,
            "error": self._on_error,
        }

    # ---- the update loop's side ------------------------------------------------------------------
    def start(self) -> None:
        if self.threaded:
            self._thread = threading.Thread(target=self._run, name="replay-client", daemon=True)
            self._thread.start()
        else:
            self._open()

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        else:
            self._close_socket()

    def get_batch(self, timeout: float) -> Batch | None:
        """The next batch, or None after `timeout` seconds. On a CPU the previous batch's tensors may be
        reused from here on (they can be a shared-memory slot that replay fills again)."""
        if self.threaded:
            try:
                return self.batches.get(timeout=timeout)
            except queue.Empty:
                return None
        if self._held_slot >= 0:
            assert self._slots is not None  # (giving the file up forgets the held slot)
            self._slots.free.append(self._held_slot)
            self._held_slot = -1
        deadline = time.monotonic() + timeout
        while True:
            wait = 0.0 if self._ready else max(deadline - time.monotonic(), 0.0)
            self._pump(int(wait * 1000))
            if self._ready:
                batch = self._ready.popleft()
                self._held_slot = batch.slot
                return batch
            if time.monotonic() >= deadline:
                return None

    def send_priorities(
        self, index: np.ndarray, ids: np.ndarray, priority: np.ndarray | torch.Tensor, ready: Ready | None = None
    ) -> None:
        """New priorities for a batch's rows. `priority` may still be arriving from the GPU (a host tensor
        an asynchronous copy fills): then `ready` (a CUDA event recorded after the copy) says when it has,
        and the update loop does not wait for it; they are sent once it has passed."""
        if self.threaded or self._sock is None:  # (before start: they go out with the first requests)
            self.priorities.put((index, ids, priority, ready))
        else:
            if ready is not None:
                ready.synchronize()
            self._send_priorities(index, ids, np.asarray(priority))

    # ---- the socket's side (one thread) --------------------------------------------------------
    def _open(self) -> None:
        net = self.config.net
        self._sock = make_socket(self.ctx, zmq.DEALER, hwm=1024, max_message_bytes=net.max_message_mb << 20)
        secure_client(self._sock, self.curve)
        self._connections = ConnectionMonitor(log)
        self._connections.watch(self._sock, "replay sampling")
        connect(self._sock, self.host, net.sample_port)
        self._encode = Encoder("learner")
        self._next_stats = 0.0
        self._open_batch_file()

    @property
    def _batch_file(self) -> BatchFile | None:
        return self._slots.file if self._slots is not None else None

    def _open_batch_file(self) -> None:
        """A fresh batch file with every slot free (none when shared memory is off or unusable here)."""
        self._close_batch_file()
        self._slots = BatchSlots.open(self.config, self.spec)

    def _close_batch_file(self) -> None:
        if self._slots is not None:
            self._slots.close()
            self._slots = None
        self._held_slot = -1

    def _reset_requests(self) -> None:
        """Forget the requests in flight (lost, or a restarted server) and start over on a new socket and
        batch file: late replies go to the old socket's identity, late batches into the old file."""
        self._sent_at.clear()
        self._stats_at = 0.0
        if self._slots is not None:
            self._ready = deque(b for b in self._ready if b.slot < 0)
        self._close_socket()
        self._open()

    def _requests_lost(self, now: float) -> None:
        self.requests_lost += len(self._sent_at)
        size = self.stats.get("size", "unknown")
        log.warning(
            "no answer from replay to a sample request for %.0f s (replay last said size %s, %s); taking the "
            "%d in flight as lost and sending them again",
            now - self._sent_at[0],
            size,
            f"waiting for {self.stats['waiting']}" if self.stats.get("waiting") else "not waiting",
            len(self._sent_at),
        )
        self._timeout = min(2 * self._timeout, MAX_SAMPLE_TIMEOUT_S)
        self._reset_requests()

    def _answered(self, batch: bool) -> None:
        if self._sent_at:
            self._sent_at.popleft()
        if batch:
            self._timeout = self.config.learner.sample_timeout_s

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._connections.close()
            self._sock.close(linger=200)
            self._sock = None
        self._close_batch_file()

    def _send_priorities(self, index: np.ndarray, ids: np.ndarray, priority: np.ndarray) -> None:
        assert self._sock is not None
        frames = self._encode("priorities", arrays={"index": index, "id": ids, "priority": priority})
        send_frames(self._sock, frames)

    def _pump(self, wait_ms: int) -> None:
        """One round of the socket's work: top up the requests in flight, send priorities and the
        periodic stats request, then take every reply that has arrived (waiting up to `wait_ms`)."""
        sock = self._sock
        assert sock is not None
        now = time.monotonic()
        if now >= self._next_monitor:
            self._connections.poll()
            self._next_monitor = now + MONITOR_PERIOD_S
        self._request(sock, now)
        self._send_landed_priorities()
        if now >= self._next_stats:
            sock.send_multipart(self._encode("stats_request"))
            self._next_stats = now + STATS_PERIOD_S
        if self._sent_at and now - self._sent_at[0] > self._timeout:
            if now - self._stats_at < 2 * STATS_PERIOD_S and self.stats.get("size", 0) < self.config.replay.min_size:
                self._sent_at = deque(now for _ in self._sent_at)  # replay is filling: the wait starts after
            else:
                self._requests_lost(now)
                return
        # EVENTS, not poll (a Poller per call) or a NOBLOCK receive that ends in an exception: this runs
        # once per update, and a reply has usually arrived already.
        if not sock.get(_EVENTS) & _POLLIN and not sock.poll(wait_ms):
            return
        while sock.get(_EVENTS) & _POLLIN:
            self._receive(sock.recv_multipart(copy=False))
            if self._sock is not sock:  # a restarted replay: the requests started over on a new socket
                return

    def _request(self, sock: zmq.Socket, now: float) -> None:
        """Up to `prefetch` requests in flight and decoded batches together (when threaded, beside the
        queue's): the update loop never finds nothing ready while the server has data."""
        while len(self._sent_at) + len(self._ready) < self.config.learner.prefetch and now >= self._hold_until:
            meta = {"batch_size": self.config.learner.batch_size, "beta": float(self.beta)}
            if self._slots is not None:
                meta.update(self._slots.take())
            send_frames(sock, self._encode("sample", meta))
            self._sent_at.append(now)

    def _send_landed_priorities(self) -> None:
        """Priority updates in order, each once its copy from the GPU has landed."""
        while not self.priorities.empty():  # this thread is the queue's only reader: no Empty to catch
            self._unsent_priorities.append(self.priorities.get_nowait())
        while self._unsent_priorities:
            index, ids, priority, ready = self._unsent_priorities[0]
            if ready is not None and not ready.query():
                break
            self._unsent_priorities.popleft()
            self._send_priorities(index, ids, np.asarray(priority))

    # ---- replies, one handler per kind ------------------------------------------------------------
    def _receive(self, frames: list) -> None:
        try:
            msg = decode(frames, expect=tuple(self._handlers))
        except DecodeError as err:
            self.decode_errors += 1
            log.warning("bad reply from replay: %s", err)
            return
        self._handlers[msg.kind](msg)

    def _on_batch(self, msg: Message) -> None:
        self._answered(batch=True)
        if "shm_refused" in msg.meta and self._slots is not None:
            log.info(
                "replay cannot write this learner's batch file, so batches come over the socket: %s",
                msg.meta["shm_refused"],
            )
            self._close_batch_file()
        self.batches_by_socket += 1
        self._ready.append(to_batch(msg.arrays, pin_memory=self.pin_memory, copy=False))

    def _on_batch_ref(self, msg: Message) -> None:
        self._answered(batch=True)
        slots, slot = self._slots, msg.meta["slot"]
        if slots is None or not slots.names_ours(msg.meta):
            self.stale_batches += 1  # for a batch file given up since: its slot is not ours to read
            return
        if msg.meta["size"] != slots.file.batch_size:
            self.decode_errors += 1
            log.warning(
                "replay filled slot %d with %d transitions, not %d", slot, msg.meta["size"], slots.file.batch_size
            )
            return
        if self.batches_by_shared_memory == 0:
            log.info("sampled batches arrive in shared memory (%s)", slots.file.path)
        self.batches_by_shared_memory += 1
        batch = slots.tensors.get(slot)
        if batch is None:
            batch = self._slot_batch(slots, slot)
        self._ready.append(batch)

    def _slot_batch(self, slots: BatchSlots, slot: int) -> Batch:
        """Tensors over a slot of the batch file. A thread hands batches over a queue, not in step with
        get_batch, so it copies the slot's arrays (into pinned memory when pinning anyway) and frees the
        slot at once; otherwise the tensors are the slot, made once, and it is freed by the next get_batch."""
        batch = to_batch(slots.file.views(slot), pin_memory=self.pin_memory, copy=self.threaded)
        if self.threaded:
            slots.free.append(slot)
        else:  # the same memory every time: tensors over it need making once
            batch.slot = slot
            slots.tensors[slot] = batch
        return batch

    def _on_stats(self, msg: Message) -> None:
        if msg.meta["inserted"] < self.stats.get("inserted", 0):
            # A restarted server forgot the requests we had in flight.
            log.warning("the replay server restarted; re-sending sample requests")
            self._reset_requests()
        self.stats = msg.meta
        self._stats_at = time.monotonic()

    def _on_error(self, msg: Message) -> None:
        self._answered(batch=False)
        self._hold_until = time.monotonic() + ERROR_PAUSE_S
        log.error("replay refused a request: %s", msg.meta)

    def _run(self) -> None:
        """The thread: hand decoded batches to the queue as room appears, pump the socket meanwhile."""
        self._open()
        try:
            while not self._closing.is_set():
                while self._ready:
                    try:
                        # With the queue full, wait here (GIL released) until the update loop takes one.
                        self.batches.put(self._ready[0], timeout=PUT_WAIT_S)
                    except queue.Full:
                        break
                    self._ready.popleft()
                self._pump(0 if self._ready else 2 if self._unsent_priorities else 20)
        finally:
            self._close_socket()
