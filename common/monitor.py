"""Peer connections in the log: one WARNING when a connection is lost, one INFO when it is back.

ZMTP heartbeats (`common.sockets`) make libzmq drop a connection whose peer died or sits behind a
network partition within HEARTBEAT_IVL + HEARTBEAT_TIMEOUT (6 s), and reconnect once the peer can be
reached again, but it does both silently. A socket monitor reports them; `ConnectionMonitor` turns its
events into log lines that name the socket's role and the peer:

    connection to learner control 10.0.0.1:5550 lost (closed by the peer, or no heartbeat for 5 s); reconnecting
    connection to learner control 10.0.0.1:5550 re-established after 9.4 s
    learner control 0.0.0.0:5550: connection from 10.0.0.7:51234 lost (...)
    learner control 0.0.0.0:5550: 10.0.0.7:51302 connected again after 9.6 s

On a socket without heartbeats (the bulk path to replay, see `make_socket`) a loss reads "closed by the
peer, or TCP gave up" instead. A first connection is logged at DEBUG only: that a process joined is
said elsewhere (the actor's `joined run`, the learner's `actor N joined`).

It is not a thread: the thread that owns the sockets calls `poll()` from the loop it runs anyway (ZeroMQ
sockets are not thread-safe, and every distdqn loop wakes at least every 100 ms). Create the monitor
and `watch` a socket in the thread that made it, before handing both to the thread that polls, and
before bind or connect, so that no first event is missed. (A connected socket watched late is taken to
be up, so its first loss is still reported.)

libzmq gives a socket one monitor: a later `zmq_socket_monitor` replaces the earlier one. A CURVE
server socket already has one (`common.security` counts clients that fail the handshake with it), so
`watch(..., refusals=...)` takes that count over for the sockets it watches; call it after
`secure_server`.

How a server tells its peers apart: libzmq reports an accepted connection with its file descriptor, from
which the peer's address is read, and a disconnection with the same descriptor; a successful handshake
carries no descriptor and is matched to the oldest connection still handshaking on that socket.
"After S s" counts from the moment the loss was reported, not from when the network failed.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import zmq
from zmq.utils.monitor import parse_monitor_message

from common.sockets import HEARTBEAT_TIMEOUT_MS

if TYPE_CHECKING:
    from common.security import Refusals

_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_ACCEPTED
    | zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_DISCONNECTED
)
_CURVE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
_HANDSHAKE_FAILURES = _CURVE_FAILURES | zmq.EVENT_HANDSHAKE_FAILED_AUTH
_PROTOCOL_ERRORS = {getattr(zmq, n): n[len("PROTOCOL_ERROR_") :] for n in dir(zmq) if n.startswith("PROTOCOL_ERROR_")}
_MAX_EVENTS_PER_POLL = 256  # a client hammering a server cannot hold the owner's loop
_BECAUSE_HEARTBEATS = f"closed by the peer, or no heartbeat for {HEARTBEAT_TIMEOUT_MS / 1000:g} s"
_BECAUSE_TCP = "closed by the peer, or TCP gave up"  # a socket without heartbeats (see make_socket)


@dataclass
class _Inbound:
    peer: str  # HOST:PORT of the client
    up: bool = False  # handshake done: messages can flow


@dataclass
class _Watched:
    role: str
    pair: zmq.Socket
    refusals: Refusals | None
    because: str  # what a loss means on this socket
    inbound: dict[int, _Inbound] = field(default_factory=dict)  # accepted connections, by file descriptor
    handshaking: deque[int] = field(default_factory=deque)  # accepted, not yet through the handshake
    outbound: dict[str, str] = field(default_factory=dict)  # endpoint -> "connecting", "up" or "failed"
    lost: dict[str, float] = field(default_factory=dict)  # peer host or endpoint -> when it was lost
    failing: set[str] = field(default_factory=set)  # endpoints whose failed handshake was logged


def _address(endpoint: bytes) -> str:
    return endpoint.decode("utf-8", "replace").removeprefix("tcp://")


def _peer_address(fd: int) -> str:
    """HOST:PORT of the TCP peer on `fd` (a libzmq socket: read through a duplicate, left open)."""
    try:
        with socket.socket(fileno=socket.dup(fd)) as sock:
            host, port = sock.getpeername()[:2]
    except (OSError, ValueError):  # closed since the event was sent, or not a TCP socket
        return "an unknown peer"
    return f"{host}:{port}"


def _host(address: str) -> str:
    return address.rpartition(":")[0] or address


class ConnectionMonitor:
    """Logs lost and re-established connections of the sockets it watches; `poll()` from the owner's loop."""

    def __init__(self, logger: logging.Logger, *, interval_s: float = 0.1) -> None:
        self.log = logger
        self.interval_s = interval_s
        self.quiet = False
        """set while shutting down: peers leaving then are expected, and logged at DEBUG only"""
        self._watched: list[_Watched] = []
        self._next_poll = 0.0

    def watch(self, sock: zmq.Socket, role: str, *, refusals: Refusals | None = None) -> None:
        """Monitor `sock` (from the thread that owns it). `refusals`: count failed CURVE handshakes there."""
        endpoint = f"inproc://distdqn-connections-{uuid.uuid4().hex}"
        sock.monitor(endpoint, _EVENTS)
        pair = sock.context.socket(zmq.PAIR)
        pair.setsockopt(zmq.LINGER, 0)
        pair.connect(endpoint)
        because = _BECAUSE_HEARTBEATS if sock.getsockopt(zmq.HEARTBEAT_IVL) > 0 else _BECAUSE_TCP
        self._watched.append(_Watched(role, pair, refusals, because))

    def poll(self, *, force: bool = False) -> None:
        """Log what happened since the last call; cheap enough for every iteration of a hot loop."""
        now = time.monotonic()
        if not force and now < self._next_poll:
            return
        self._next_poll = now + self.interval_s
        for watched in self._watched:
            for _ in range(_MAX_EVENTS_PER_POLL):
                try:
                    frames = watched.pair.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._handle(watched, parse_monitor_message(frames))

    def lost_since(self, role: str) -> float | None:
        """When the oldest connection of the sockets watched as `role` that is still lost was lost (monotonic
        time), None when none is. libzmq does not reconnect after some errors (a message over MAXMSGSIZE):
        a caller that must not stay deaf reconnects itself once this is old enough."""
        times = [t for w in self._watched if w.role == role for t in w.lost.values()]
        return min(times) if times else None

    def close(self) -> None:
        for watched in self._watched:
            with contextlib.suppress(zmq.ZMQError):
                watched.pair.close()
        self._watched.clear()

    # ---- events --------------------------------------------------------------------------------
    def _handle(self, w: _Watched, event: dict) -> None:
        kind, value, endpoint = event["event"], event["value"], _address(event["endpoint"])
        if kind == zmq.EVENT_ACCEPTED:
            w.inbound[value] = _Inbound(_peer_address(value))
            w.handshaking.append(value)
        elif kind == zmq.EVENT_CONNECTED:
            w.outbound[endpoint] = "connecting"
        elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
            accepted = self._next_handshaking(w)
            if accepted is not None:
                accepted.up = True
                self._back(w, _host(accepted.peer), f"{w.role} {endpoint}: {accepted.peer}", "connected again")
            else:
                w.outbound[endpoint] = "up"
                w.failing.discard(endpoint)
                self._back(w, endpoint, f"connection to {w.role} {endpoint}", "re-established")
        elif kind & _HANDSHAKE_FAILURES:
            if self._next_handshaking(w) is not None:
                self._client_failed(w, kind, value, endpoint)
            else:
                w.outbound[endpoint] = "failed"
                self._server_refused(w, kind, value, endpoint)
        elif kind == zmq.EVENT_DISCONNECTED:
            accepted = w.inbound.pop(value, None)
            if accepted is not None:
                with contextlib.suppress(ValueError):
                    w.handshaking.remove(value)
                if accepted.up:
                    self._lost(w, _host(accepted.peer), f"{w.role} {endpoint}: connection from {accepted.peer} lost")
            # An endpoint never seen before was connected before `watch` (its first events were missed).
            elif w.outbound.pop(endpoint, "up") == "up":
                self._lost(w, endpoint, f"connection to {w.role} {endpoint} lost", "; reconnecting")

    @staticmethod
    def _next_handshaking(w: _Watched) -> _Inbound | None:
        while w.handshaking:
            accepted = w.inbound.get(w.handshaking.popleft())
            if accepted is not None:
                return accepted
        return None

    def _back(self, w: _Watched, key: str, what: str, again: str) -> None:
        lost_at = w.lost.pop(key, None)
        if lost_at is None:
            self.log.debug("%s: up", what)
        else:
            self.log.info("%s %s after %.1f s", what, again, time.monotonic() - lost_at)

    def _lost(self, w: _Watched, key: str, message: str, suffix: str = "") -> None:
        w.lost.setdefault(key, time.monotonic())
        self.log.log(logging.DEBUG if self.quiet else logging.WARNING, "%s (%s)%s", message, w.because, suffix)

    @staticmethod
    def _cause(kind: int, value: int) -> str:
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            return f"refused by the server's authenticator, status {value}"
        return _PROTOCOL_ERRORS.get(value, f"error {value}")

    def _client_failed(self, w: _Watched, kind: int, value: int, endpoint: str) -> None:
        """What `common.security` would have counted, had this monitor not replaced its own."""
        if w.refusals is not None and kind & _CURVE_FAILURES:
            detail = f"a client failed the CURVE handshake on {w.role} {endpoint} ({self._cause(kind, value)})"
            w.refusals.add("handshake_failed", f"{detail}: plaintext, or the wrong server key")

    def _server_refused(self, w: _Watched, kind: int, value: int, endpoint: str) -> None:
        if endpoint in w.failing:  # once until a handshake succeeds: libzmq retries every 100 ms
            return
        w.failing.add(endpoint)
        self.log.warning(
            "handshake with %s %s failed (%s): check this process's CurveZMQ keys, and that its public key "
            "is in the server's authorized directory",
            w.role,
            endpoint,
            self._cause(kind, value),
        )
