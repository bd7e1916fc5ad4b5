"""The learner's side of the replay server: `prefetch` sample requests always in flight, priorities back.

The update loop should never wait on the network when data exists. ZeroMQ's own I/O thread receives
the replies in the background either way; what remains is decoding them into tensors and sending
priority updates, and where that runs depends on the device:

- CUDA: in a thread of its own, which turns replies into pinned host memory (so the copy to the device
  overlaps the update) while the update loop waits on the GPU with the GIL released, and queues them;
  priority updates reach it through a queue.
- CPU: inline, between updates. A CPU update holds the GIL for much of its time, and a second Python
  thread doing the same work made the update loop wait for the GIL (it was off the CPU 17% of the
  time): 0.79-0.82x the update rate on batches from memory, against 0.80-0.87x inline
  (`benchmarks/learner_throughput.py`, two cores).

The ZeroMQ socket is used by one thread only (sockets are not thread-safe).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
import zmq

from common.config import RunConfig
from common.monitor import ConnectionMonitor
from common.security import ClientSecurity, secure_client
from common.sockets import connect, make_socket
from common.wire import DecodeError, Encoder, decode

log = logging.getLogger(__name__)

STATS_PERIOD_S = 1.0
LOST_REQUESTS_S = 30.0
MONITOR_PERIOD_S = 0.1  # connection events are logged, not acted on: no need to look every update
PUT_WAIT_S = 0.01  # the longest a priority update waits while the batch queue is full


@dataclass
class Batch:
    obs: torch.Tensor
    action: torch.Tensor
    reward: torch.Tensor
    discount: torch.Tensor
    next_obs: torch.Tensor
    weight: torch.Tensor
    index: np.ndarray
    id: np.ndarray


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
    ) -> None:
        self.config = config
        self.curve = curve
        self.host = host
        self.pin_memory = pin_memory
        self.threaded = pin_memory if threaded is None else threaded  # see the module docstring
        self.ctx = ctx
        self.batches: queue.Queue[Batch] = queue.Queue(maxsize=config.learner.prefetch)  # threaded only
        self.priorities: queue.Queue[tuple[np.ndarray, np.ndarray, np.ndarray]] = queue.Queue()  # threaded only
        self.beta = config.replay.beta_start
        self.stats: dict = {}
        self.decode_errors = 0
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: zmq.Socket | None = None
        self._ready: deque[Batch] = deque()  # decoded, not yet handed out (or queued, when threaded)
        self._in_flight = 0
        self._next_stats = 0.0
        self._next_monitor = 0.0
        self._last_batch = time.monotonic()

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
        if self.threaded:
            try:
                return self.batches.get(timeout=timeout)
            except queue.Empty:
                return None
        deadline = time.monotonic() + timeout
        while True:
            wait = 0.0 if self._ready else max(deadline - time.monotonic(), 0.0)
            self._pump(int(wait * 1000))
            if self._ready:
                return self._ready.popleft()
            if time.monotonic() >= deadline:
                return None

    def send_priorities(self, index: np.ndarray, ids: np.ndarray, priority: np.ndarray) -> None:
        if self.threaded or self._sock is None:  # (before start: they go out with the first requests)
            self.priorities.put((index, ids, priority))
        else:
            self._send_priorities(index, ids, priority)

    # ---- the socket's side (one thread) --------------------------------------------------------
    def _open(self) -> None:
        net = self.config.net
        self._sock = make_socket(self.ctx, zmq.DEALER, hwm=1024, max_message_bytes=net.max_message_mb << 20)
        secure_client(self._sock, self.curve)
        self._connections = ConnectionMonitor(log)
        self._connections.watch(self._sock, "replay sampling")
        connect(self._sock, self.host, net.sample_port)
        self._encode = Encoder("learner")
        self._last_batch = time.monotonic()

    def _close_socket(self) -> None:
        if self._sock is not None:
            self._connections.close()
            self._sock.close(linger=200)
            self._sock = None

    def _send_priorities(self, index: np.ndarray, ids: np.ndarray, priority: np.ndarray) -> None:
        assert self._sock is not None
        frames = self._encode("priorities", arrays={"index": index, "id": ids, "priority": priority})
        self._sock.send_multipart(frames, copy=False)

    def _pump(self, wait_ms: int) -> None:
        """One round of the socket's work: top up the requests in flight, send priorities and the
        periodic stats request, then take every reply that has arrived (waiting up to `wait_ms`)."""
        sock = self._sock
        assert sock is not None
        now = time.monotonic()
        if now >= self._next_monitor:
            self._connections.poll()
            self._next_monitor = now + MONITOR_PERIOD_S
        # Up to `prefetch` requests in flight and decoded batches together (when threaded, beside the
        # queue's): the update loop never finds nothing ready while the server has data.
        while self._in_flight + len(self._ready) < self.config.learner.prefetch:
            meta = {"batch_size": self.config.learner.batch_size, "beta": float(self.beta)}
            sock.send_multipart(self._encode("sample", meta))
            self._in_flight += 1
        while True:
            try:
                self._send_priorities(*self.priorities.get_nowait())
            except queue.Empty:
                break
        if now >= self._next_stats:
            sock.send_multipart(self._encode("stats_request"))
            self._next_stats = now + STATS_PERIOD_S
        serving = self.stats.get("size", 0) >= self.config.replay.min_size and not self.stats.get("waiting")
        if self._in_flight and serving and now - self._last_batch > LOST_REQUESTS_S:
            # The server has data and is not holding samples back, yet answers none: it lost them.
            log.warning("no batch from replay for %.0f s; re-sending sample requests", now - self._last_batch)
            self._in_flight = 0
            self._last_batch = now
            return
        if not sock.poll(wait_ms):
            return
        # EVENTS, not a NOBLOCK receive that ends in an exception: this runs once per update.
        while sock.get(zmq.EVENTS) & zmq.POLLIN:
            self._receive(sock.recv_multipart(copy=False))

    def _receive(self, frames: list) -> None:
        try:
            msg = decode(frames, expect=("batch", "replay_stats", "error"))
        except DecodeError as err:
            self.decode_errors += 1
            log.warning("bad reply from replay: %s", err)
            return
        if msg.kind == "batch":
            self._in_flight = max(self._in_flight - 1, 0)
            self._last_batch = time.monotonic()
            self._ready.append(self._to_batch(msg.arrays))
        elif msg.kind == "replay_stats":
            if msg.meta["inserted"] < self.stats.get("inserted", 0):
                # A restarted server forgot the requests we had in flight.
                log.warning("the replay server restarted; re-sending sample requests")
                self._in_flight = 0
            self.stats = msg.meta
        else:
            self._in_flight = max(self._in_flight - 1, 0)
            log.error("replay refused a request: %s", msg.meta)

    def _to_batch(self, arrays: dict[str, np.ndarray]) -> Batch:
        def tensor(name: str) -> torch.Tensor:
            array = arrays[name]
            if not array.flags.writeable:  # a frame received as bytes; torch wants memory it may write
                array = array.copy()
            # Otherwise the tensor is the received frame itself (zero-copy), kept alive by the tensor.
            t = torch.from_numpy(array)
            return t.pin_memory() if self.pin_memory else t

        return Batch(
            obs=tensor("obs"),
            action=tensor("action"),
            reward=tensor("reward"),
            discount=tensor("discount"),
            next_obs=tensor("next_obs"),
            weight=tensor("weight"),
            index=arrays["index"],
            id=arrays["id"],
        )

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
                self._pump(0 if self._ready else 20)
        finally:
            self._close_socket()
