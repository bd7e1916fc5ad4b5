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
in the threaded mode) they are copied out at once and the slot is free again (`learner.batch`).

With `replay.shards` K > 1 there is one link (learner/replay_link.py: socket, batch file, requests in
flight) per shard, and each request goes to a shard chosen by its priority mass (learner/shard_choice.py),
among those that hold a batch's worth and are heard from. A shard that answered nothing for
`SHARD_SILENT_S` (statistics are asked every second), or whose requests are lost, is left out (logged,
counted in `shard_outages`) and new requests go to the others, so a dead shard never stalls the update
loop; it is still asked for statistics and rejoins when it answers (a restarted shard, from its
snapshot, on a fresh socket).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from typing import Protocol

import numpy as np
import torch
import zmq

from common.config import RunConfig
from common.envs import EnvSpec
from common.security import ClientSecurity
from learner.batch import Batch
from learner.replay_link import ReplayLink
from learner.shard_choice import choose_shard

log = logging.getLogger(__name__)

MONITOR_PERIOD_S = 0.1  # connection events are logged, not acted on: no need to look every update
PUT_WAIT_S = 0.01  # the longest a priority update waits while the batch queue is full
SHARD_SILENT_S = 5.0  # a shard that answered no stats request for this long is left out of sampling
_SUMMED = ("size", "capacity", "inserted", "sampled", "insert_rate", "sample_rate", "dropped", "lost")


class Ready(Protocol):
    """What send_priorities needs of a torch.cuda.Event: whether the work before it has finished."""

    def query(self) -> bool: ...

    def synchronize(self) -> None: ...


_Priorities = tuple[np.ndarray, np.ndarray, "np.ndarray | torch.Tensor", "Ready | None", int]


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
        self.host = host
        self.pin_memory = pin_memory
        self.threaded = pin_memory if threaded is None else threaded  # see the module docstring
        self.batches: queue.Queue[Batch] = queue.Queue(maxsize=config.learner.prefetch)  # threaded only
        self.priorities: queue.Queue[_Priorities] = queue.Queue()  # threaded only (and before start)
        self._unsent_priorities: deque[_Priorities] = deque()  # taken from the queue, copy not yet landed
        self._beta = config.replay.beta_start
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._ready: deque[Batch] = deque()  # decoded, not yet handed out (or queued, when threaded)
        self._held: Batch | None = None  # the batch the update loop has now, when it is a batch-file slot
        self._next_monitor = 0.0
        self.links = [
            ReplayLink(
                config, host, shard, spec=spec, ctx=ctx, curve=curve, pin_memory=pin_memory, threaded=self.threaded
            )
            for shard in range(config.replay.shards)
        ]
        self.sharded = len(self.links) > 1
        self.shard_outages = 0
        self._rng = np.random.default_rng()
        self._poller: zmq.Poller | None = None  # over every link's socket (sharded), remade after a reset

    # ---- what the learner reads -------------------------------------------------------------------
    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = value
        for link in self.links:
            link.beta = value

    @property
    def stats(self) -> dict:
        """The newest replay_stats: one server's, or the shards' summed (with `shards_up`)."""
        if not self.sharded:
            return self.links[0].stats
        heard = [link.stats for link in self.links if link.stats]
        if not heard:
            return {}
        total: dict = {key: sum(s.get(key, 0) for s in heard) for key in _SUMMED}
        rejected: dict[str, int] = {}
        for s in heard:
            for reason, count in s.get("rejected", {}).items():
                rejected[reason] = rejected.get(reason, 0) + count
        total["rejected"] = rejected
        total["samples_per_insert"] = total["sampled"] / total["inserted"] if total["inserted"] else 0.0
        waiting = [f"{link.label}: {link.stats['waiting']}" for link in self.links if link.stats.get("waiting")]
        total["waiting"] = "; ".join(waiting)
        total["shards_up"] = self._shards_up()
        return total

    def _sum(self, name: str) -> int:
        return sum(getattr(link, name) for link in self.links)

    requests_lost = property(lambda self: self._sum("requests_lost"))
    decode_errors = property(lambda self: self._sum("decode_errors"))
    batches_by_shared_memory = property(lambda self: self._sum("batches_by_shared_memory"))
    batches_by_socket = property(lambda self: self._sum("batches_by_socket"))
    stale_batches = property(lambda self: self._sum("stale_batches"))

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
            self._close_links()

    def get_batch(self, timeout: float) -> Batch | None:
        """The next batch, or None after `timeout` seconds. On a CPU the previous batch's tensors may be
        reused from here on (they can be a shared-memory slot that replay fills again)."""
        if self.threaded:
            try:
                return self.batches.get(timeout=timeout)
            except queue.Empty:
                return None
        self._free_held()
        deadline = time.monotonic() + timeout
        while True:
            wait = 0.0 if self._ready else max(deadline - time.monotonic(), 0.0)
            self._pump(int(wait * 1000))
            if self._ready:
                batch = self._ready.popleft()
                self._held = batch if batch.slot >= 0 else None
                return batch
            if time.monotonic() >= deadline:
                return None

    def _free_held(self) -> None:
        held, self._held = self._held, None
        if held is not None:
            slots = self.links[held.shard].slots
            # (a link that gave its file up since forgot the slot with it)
            if slots is not None and slots.tensors.get(held.slot) is held:
                slots.free.append(held.slot)

    def send_priorities(
        self,
        index: np.ndarray,
        ids: np.ndarray,
        priority: np.ndarray | torch.Tensor,
        ready: Ready | None = None,
        shard: int = 0,
    ) -> None:
        """New priorities for a batch's rows, to the shard it came from (`Batch.shard`). `priority` may
        still be arriving from the GPU (a host tensor an asynchronous copy fills): then `ready` (a CUDA
        event recorded after the copy) says when it has, and the update loop does not wait for it; they
        are sent once it has passed."""
        if self.threaded or not self._started:  # (before start: they go out with the first requests)
            self.priorities.put((index, ids, priority, ready, shard))
        else:
            if ready is not None:
                ready.synchronize()
            self._send_priorities(shard, index, ids, np.asarray(priority))

    # ---- the sockets' side (one thread) --------------------------------------------------------
    def _open(self) -> None:
        for link in self.links:
            link.open()
        self._poller = None
        self._started = True

    def _close_links(self) -> None:
        for link in self.links:
            link.close()
        self._held = None

    def _reset(self, link: ReplayLink) -> None:
        """Start the link over (see ReplayLink.reset); batches in its old file are gone with it."""
        if link.slots is not None:
            self._ready = deque(b for b in self._ready if b.slot < 0 or b.shard != link.shard)
            if self._held is not None and self._held.shard == link.shard:
                self._held = None
        link.reset()
        self._poller = None

    def _send_priorities(self, shard: int, index: np.ndarray, ids: np.ndarray, priority: np.ndarray) -> None:
        link = self.links[shard] if 0 <= shard < len(self.links) else None
        if link is not None and link.sock is not None:  # (after close: nowhere to send them)
            link.send_priorities(index, ids, priority)

    def _pump(self, wait_ms: int) -> None:
        """One round of the sockets' work: top up the requests in flight, send priorities and the
        periodic stats requests, then take every reply that has arrived (waiting up to `wait_ms`)."""
        now = time.monotonic()
        if now >= self._next_monitor:
            for link in self.links:
                link.poll_connections()
            self._next_monitor = now + MONITOR_PERIOD_S
        for link in self.links:
            if now >= link.next_stats:
                link.send_stats_request(now)
            if link.lost(now):
                self._leave_out(link, now, "its sample requests went unanswered")
                self._reset(link)
        if self.sharded:
            self._check_shards(now)
        self._request(now)
        self._send_landed_priorities()
        arrived = self.links[0].has_input() if not self.sharded else any(link.has_input() for link in self.links)
        if not arrived and not self._wait(wait_ms):
            return
        for link in self.links:
            # EVENTS, not a NOBLOCK receive that ends in an exception: this runs once per update, and a
            # reply has usually arrived already.
            sock = link.sock
            while link.sock is sock and link.has_input():
                assert sock is not None
                batch = link.receive(sock.recv_multipart(copy=False))
                if batch is not None:
                    self._ready.append(batch)
                if link.restarted:  # its server forgot our requests: start over on a new socket
                    self._reset(link)

    def _wait(self, wait_ms: int) -> bool:
        """Wait up to `wait_ms` for a reply on any link; whether one came."""
        if wait_ms <= 0:
            return False
        if not self.sharded:
            sock = self.links[0].sock
            return sock is not None and bool(sock.poll(wait_ms))
        if self._poller is None:
            self._poller = zmq.Poller()
            for link in self.links:
                if link.sock is not None:
                    self._poller.register(link.sock, zmq.POLLIN)
        return bool(self._poller.poll(wait_ms))

    def _check_shards(self, now: float) -> None:
        """Leave out shards that fell silent; take back those that answer again. A silent shard keeps its
        socket: a shard that is only slow (an overloaded host) answers there later, and a fresh socket
        would throw those answers away; one that lost requests or restarted is reset where that is seen."""
        for link in self.links:
            up = link.in_use
            silent = now - link.heard_at > SHARD_SILENT_S if link.heard_at else False
            if up and silent:
                self._leave_out(link, now, f"no answer for {SHARD_SILENT_S:.0f} s")
            elif not up and link.heard_at and not silent:
                link.in_use = True
                others = self._shards_up()
                log.warning("%s answers again: sampling %d of %d shards", link.label, others, len(self.links))

    def _leave_out(self, link: ReplayLink, now: float, why: str) -> None:
        if not self.sharded or not link.in_use:
            return
        link.in_use = False
        self.shard_outages += 1
        log.warning(
            "%s left out of sampling (%s): sampling the other %d of %d shards until it answers",
            link.label,
            why,
            self._shards_up(),
            len(self.links),
        )

    def _shards_up(self) -> int:
        return sum(link.in_use for link in self.links)

    def _in_flight(self) -> int:
        """Requests in flight to the shards in use: a shard left out holds none of the prefetch."""
        if not self.sharded:
            return len(self.links[0].sent_at)
        return sum(len(link.sent_at) for link in self.links if link.in_use)

    def _request(self, now: float) -> None:
        """Up to `prefetch` requests in flight and decoded batches together (when threaded, beside the
        queue's): the update loop never finds nothing ready while a server has data."""
        wanted = self.config.learner.prefetch - self._in_flight() - len(self._ready)
        for _ in range(wanted):
            link = self._next_link(now)
            if link is None:
                return
            link.request(now)

    def _next_link(self, now: float) -> ReplayLink | None:
        if not self.sharded:
            link = self.links[0]
            return link if now >= link.hold_until else None
        masses = [
            link.mass if link.in_use and link.can_serve() and now >= link.hold_until else 0.0 for link in self.links
        ]
        shard = choose_shard(masses, self._rng)
        return None if shard is None else self.links[shard]

    def _send_landed_priorities(self) -> None:
        """Priority updates in order, each once its copy from the GPU has landed."""
        while not self.priorities.empty():  # this thread is the queue's only reader: no Empty to catch
            self._unsent_priorities.append(self.priorities.get_nowait())
        while self._unsent_priorities:
            index, ids, priority, ready, shard = self._unsent_priorities[0]
            if ready is not None and not ready.query():
                break
            self._unsent_priorities.popleft()
            self._send_priorities(shard, index, ids, np.asarray(priority))

    def _run(self) -> None:
        """The thread: hand decoded batches to the queue as room appears, pump the sockets meanwhile."""
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
            self._close_links()
