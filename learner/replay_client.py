"""The learner's side of the replay server: batches prefetched in a thread, priorities sent from it.

Why a thread: the update loop should never wait on the network when data exists. This thread keeps
`prefetch` sample requests in flight, turns each reply into tensors (pinned host memory when training on
CUDA, so the copy to the device can overlap the update), and queues them. Priority updates go the other
way through a queue, so sending them never sits in the update loop's critical path. The ZeroMQ socket
lives and dies in this thread alone (sockets are not thread-safe).
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


class ReplayClient(threading.Thread):
    def __init__(
        self,
        config: RunConfig,
        host: str,
        *,
        pin_memory: bool,
        ctx: zmq.Context,
        curve: ClientSecurity | None = None,
    ) -> None:
        super().__init__(name="replay-client", daemon=True)
        self.config = config
        self.curve = curve
        self.host = host
        self.pin_memory = pin_memory
        self.ctx = ctx
        self.batches: queue.Queue[Batch] = queue.Queue(maxsize=config.learner.prefetch)
        self.priorities: queue.Queue[tuple[np.ndarray, np.ndarray, np.ndarray]] = queue.Queue()
        self.beta = config.replay.beta_start
        self.stats: dict = {}
        self.decode_errors = 0
        self._closing = threading.Event()

    def close(self) -> None:
        self._closing.set()
        self.join(timeout=5)

    def get_batch(self, timeout: float) -> Batch | None:
        try:
            return self.batches.get(timeout=timeout)
        except queue.Empty:
            return None

    def send_priorities(self, index: np.ndarray, ids: np.ndarray, priority: np.ndarray) -> None:
        self.priorities.put((index, ids, priority))

    def _to_batch(self, arrays: dict[str, np.ndarray]) -> Batch:
        def tensor(name: str) -> torch.Tensor:
            t = torch.from_numpy(np.array(arrays[name]))  # copy: the frame's memory is read-only
            return t.pin_memory() if self.pin_memory else t

        return Batch(
            obs=tensor("obs"),
            action=tensor("action"),
            reward=tensor("reward"),
            discount=tensor("discount"),
            next_obs=tensor("next_obs"),
            weight=tensor("weight"),
            index=np.array(arrays["index"]),
            id=np.array(arrays["id"]),
        )

    def run(self) -> None:
        net = self.config.net
        sock = make_socket(self.ctx, zmq.DEALER, hwm=1024, max_message_bytes=net.max_message_mb << 20)
        secure_client(sock, self.curve)
        connections = ConnectionMonitor(log)
        connections.watch(sock, "replay sampling")
        connect(sock, self.host, net.sample_port)
        encode = Encoder("learner")
        in_flight = 0
        ready: deque[Batch] = deque()  # decoded, waiting for room in the queue
        next_stats = 0.0
        last_batch = time.monotonic()
        try:
            while not self._closing.is_set():
                connections.poll()
                while ready:
                    try:
                        self.batches.put_nowait(ready[0])
                    except queue.Full:
                        break
                    ready.popleft()
                # Up to `prefetch` requests in flight and `prefetch` decoded batches beside the queue's:
                # the update loop never finds the queue empty while the server has data.
                while in_flight + len(ready) < self.config.learner.prefetch:
                    meta = {"batch_size": self.config.learner.batch_size, "beta": float(self.beta)}
                    sock.send_multipart(encode("sample", meta))
                    in_flight += 1
                while True:
                    try:
                        index, ids, priority = self.priorities.get_nowait()
                    except queue.Empty:
                        break
                    sock.send_multipart(
                        encode("priorities", arrays={"index": index, "id": ids, "priority": priority}), copy=False
                    )
                now = time.monotonic()
                if now >= next_stats:
                    sock.send_multipart(encode("stats_request"))
                    next_stats = now + STATS_PERIOD_S
                serving = self.stats.get("size", 0) >= self.config.replay.min_size and not self.stats.get("waiting")
                if in_flight and serving and now - last_batch > LOST_REQUESTS_S:
                    # The server has data and is not holding samples back, yet answers none: it lost them.
                    log.warning("no batch from replay for %.0f s; re-sending sample requests", now - last_batch)
                    in_flight = 0
                    last_batch = now
                    continue
                if not sock.poll(1 if ready else 20):
                    continue
                frames = sock.recv_multipart(copy=False)
                try:
                    msg = decode(frames, expect=("batch", "replay_stats", "error"))
                except DecodeError as err:
                    self.decode_errors += 1
                    log.warning("bad reply from replay: %s", err)
                    continue
                if msg.kind == "batch":
                    in_flight = max(in_flight - 1, 0)
                    last_batch = time.monotonic()
                    ready.append(self._to_batch(msg.arrays))
                elif msg.kind == "replay_stats":
                    if msg.meta["inserted"] < self.stats.get("inserted", 0):
                        # A restarted server forgot the requests we had in flight.
                        log.warning("the replay server restarted; re-sending sample requests")
                        in_flight = 0
                    self.stats = msg.meta
                else:
                    in_flight = max(in_flight - 1, 0)
                    log.error("replay refused a request: %s", msg.meta)
        finally:
            connections.close()
            sock.close(linger=200)
