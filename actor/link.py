"""An actor's or evaluator's connection to the learner: join the run, then follow its weights.

Joining is a `hello` on a DEALER socket; the learner answers with the run config and the global actor
index, so a remote actor needs nothing but the learner's address. Weights arrive on a SUB socket; the
actor drains it to the newest version between environment steps (CONFLATE does not work with multipart
messages), so a slow actor never falls behind a queue of stale weights. At start the actor asks for
the current weights directly and waits for them: a late joiner never acts with random weights or waits
for the next publication.

Lost and re-established connections of the link's sockets (and of any socket the actor adds with
`connections.watch`) are logged from `newest_weights`, which the actor calls between environment steps
and while it waits to send.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass

import numpy as np
import zmq

from common.config import RunConfig
from common.errors import StartupError
from common.monitor import ConnectionMonitor
from common.security import ClientSecurity, secure_client
from common.sockets import connect, is_loopback, make_socket
from common.wire import DecodeError, Encoder, Message, decode

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 60.0
RETRY_S = 0.5


@dataclass(frozen=True)
class Welcome:
    config: RunConfig
    actor_index: int
    run_id: str


class LearnerLink:
    def __init__(
        self,
        learner_host: str,
        learner_port: int,
        *,
        role: str,
        ctx: zmq.Context,
        curve: ClientSecurity | None = None,
    ) -> None:
        self.learner_host = learner_host
        self.curve = curve  # this process's own keys (from its flags): the run config holds the learner's paths
        self.learner_port = learner_port
        self.role = role
        self.ctx = ctx
        self.encode = Encoder(f"{role}-{os.getpid()}")
        self.connections = ConnectionMonitor(log)
        self.control = make_socket(ctx, zmq.DEALER, hwm=1024, max_message_bytes=64 << 20)
        secure_client(self.control, curve)
        self.connections.watch(self.control, "learner control")
        connect(self.control, learner_host, learner_port)
        self.weights_sub: zmq.Socket | None = None
        self.version = -1
        self.learner_run_id = ""
        self.stop_reason: str | None = None
        self.rejected = 0

    def join(self, actor_index: int, stop: threading.Event, timeout_s: float = JOIN_TIMEOUT_S) -> Welcome:
        """Say hello until the learner answers; a refusal or a silent learner is a clear StartupError."""
        meta = {"role": self.role, "actor_index": actor_index, "host": socket.gethostname(), "pid": os.getpid()}
        deadline = time.monotonic() + timeout_s
        next_send = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                raise StartupError(
                    f"no answer from the learner at {self.learner_host}:{self.learner_port} within {timeout_s:g} s"
                    f" ({self._curve_hint()})"
                )
            if now >= next_send:
                self._try_send(self.encode("hello", meta))
                next_send = now + 2.0
            msg = self._recv(self.control, ("welcome", "error"), RETRY_S)
            if msg is None:
                continue
            if msg.kind == "error":
                raise StartupError(f"the learner refused to let this {self.role} join: {msg.meta}")
            config = RunConfig.from_dict(msg.meta["config"])
            self.learner_run_id = msg.meta["run_id"]
            return Welcome(config, msg.meta["actor_index"], msg.meta["run_id"])
        raise StartupError("interrupted while joining")

    def subscribe(self, config: RunConfig) -> None:
        host = config.net.public_host or self.learner_host
        if is_loopback(host) and not is_loopback(self.learner_host):
            host = self.learner_host  # the learner advertised loopback, but we reached it from elsewhere
        self.weights_sub = make_socket(
            self.ctx, zmq.SUB, hwm=4, max_message_bytes=config.net.max_message_mb << 20, heartbeats=False
        )
        self.weights_sub.setsockopt(zmq.SUBSCRIBE, b"")
        secure_client(self.weights_sub, self.curve)
        self.connections.watch(self.weights_sub, "weight broadcast")
        connect(self.weights_sub, host, config.net.weights_port)

    def _try_send(self, frames: list) -> None:
        """Never block: after a CURVE refusal libzmq drops the connection for good, and a blocking send
        would then wait forever instead of letting the caller's deadline give a clear error."""
        try:
            self.control.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            log.debug("learner not connected; will retry")

    def _curve_hint(self) -> str:
        """A CURVE refusal looks like silence to the client, so say what to check."""
        if self.curve is None:
            return "if the learner uses CurveZMQ, pass --curve-secret-key and --curve-server-key"
        return "is this actor's public key in the servers' authorized directory, and --curve-server-key theirs?"

    def fetch_weights(self, stop: threading.Event, timeout_s: float = JOIN_TIMEOUT_S) -> Message:
        """Ask the learner for its current weights and wait until they come (or stop / time out)."""
        deadline = time.monotonic() + timeout_s
        while not stop.is_set() and time.monotonic() < deadline:
            self._try_send(self.encode("get_weights"))
            # A late `welcome` answers a repeated hello from a slow start: nothing to act on.
            msg = self._recv(self.control, ("weights", "error", "welcome"), 2.0)
            if msg is not None and msg.kind == "weights":
                self.version = msg.meta["version"]
                self.learner_run_id = msg.meta.get("run_id", self.learner_run_id)
                return msg
            time.sleep(RETRY_S if msg is not None and msg.kind == "error" else 0)
        raise StartupError(f"no weights from the learner at {self.learner_host}:{self.learner_port}")

    def newest_weights(self) -> Message | None:
        """Drain the SUB socket and return the newest weights not yet applied (None if none)."""
        assert self.weights_sub is not None, "subscribe() first"
        self.connections.poll()
        newest = None
        while True:
            try:
                frames = self.weights_sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                msg = decode(frames, expect=("weights", "stop"))
            except DecodeError as err:
                self.rejected += 1
                log.warning("ignored a bad broadcast: %s", err)
                continue
            if msg.kind == "stop":
                self.stop_reason = msg.meta["reason"]
            elif self._accept(msg):
                newest = msg
        return newest

    def _accept(self, msg: Message) -> bool:
        """Newer weights from the same learner, or any weights from a restarted one (a new run_id):
        a learner resumed from a checkpoint counts versions from the checkpoint's, maybe lower."""
        run_id = msg.meta.get("run_id", self.learner_run_id)
        if run_id == self.learner_run_id and msg.meta["version"] <= self.version:
            return False
        if run_id != self.learner_run_id:
            log.info("the learner restarted (run %s): taking its weights v%d", run_id, msg.meta["version"])
            self.learner_run_id = run_id
        self.version = msg.meta["version"]
        return True

    def send(self, kind: str, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        """Statistics to the learner; dropped (not blocking) if the learner is not reading."""
        try:
            self.control.send_multipart(self.encode(kind, meta, arrays), zmq.NOBLOCK)
        except zmq.Again:
            log.debug("learner not reading; %s dropped", kind)

    def _recv(self, sock: zmq.Socket, expect: tuple[str, ...], timeout_s: float) -> Message | None:
        if not sock.poll(int(timeout_s * 1000)):
            return None
        frames = sock.recv_multipart(copy=False)
        try:
            return decode(frames, expect=expect)
        except DecodeError as err:
            self.rejected += 1
            log.warning("ignored a bad reply from the learner: %s", err)
            return None

    def close(self) -> None:
        self.connections.close()
        self.control.close()
        if self.weights_sub is not None:
            self.weights_sub.close()
