"""ZeroMQ sockets with the limits every distdqn socket needs: bounded linger, high-water marks, max size.

Why here: an unbounded LINGER keeps a process alive forever at exit when a peer is gone, an unbounded
queue turns a slow peer into unbounded memory, and without MAXMSGSIZE a single oversized message is
buffered whole before any decoder can refuse it. Every socket in the system is made by `make_socket`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import random
import socket
from collections.abc import Collection
from pathlib import Path

import zmq

from common.errors import StartupError

LINGER_MS = 500
BULK_KERNEL_BUFFER = 64 << 10
HEARTBEAT_IVL_MS = 1000
HEARTBEAT_TIMEOUT_MS = 5000
MIN_LIBZMQ = (4, 3, 5)
_SEND_MORE = int(zmq.SNDMORE)

log = logging.getLogger(__name__)


def check_libzmq() -> None:
    """libzmq before 4.3.5 has known remote-crash bugs; refuse to run on it."""
    version = zmq.zmq_version_info()
    if tuple(version[:3]) < MIN_LIBZMQ:
        raise StartupError(f"libzmq {zmq.zmq_version()} is too old: distdqn needs >= {'.'.join(map(str, MIN_LIBZMQ))}")


def make_socket(
    ctx: zmq.Context,
    socket_type: int,
    *,
    hwm: int = 64,
    max_message_bytes: int | None = None,
    linger_ms: int = LINGER_MS,
    kernel_buffer_bytes: int | None = None,
    heartbeats: bool = True,
) -> zmq.Socket:
    """`kernel_buffer_bytes` caps the OS socket buffers too: on bulk-data sockets they otherwise hold
    megabytes beyond the high-water mark, and backpressure would only start after that much latency.

    `heartbeats=False` is for sockets whose reader may stop reading for seconds with its queue full:
    the bulk path (actor PUSH -> replay PULL, held back by the rate limiter) and the weight broadcast
    (PUB -> SUB, an evaluator mid-game). A stopped reader cannot see pings, so heartbeats there drop a
    healthy connection with whatever was in flight, and libzmq can then abort the process on the
    reconnect ("Assertion failed: _input_stopped", libzmq issue 3937; seen with Atari evaluators). A
    ping left unread when a sender closes also makes the kernel reset the connection and discard the
    sender's unsent tail: actors stopping while replay was slow lost their last messages
    (tests/integration/test_accounting.py). TCP carries these streams across a stall or a partition,
    and TCP keepalive still finds dead idle peers; the control sockets, always read, keep heartbeats.
    """
    sock = ctx.socket(socket_type)
    sock.setsockopt(zmq.LINGER, linger_ms)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    if kernel_buffer_bytes is not None:
        sock.setsockopt(zmq.SNDBUF, kernel_buffer_bytes)
        sock.setsockopt(zmq.RCVBUF, kernel_buffer_bytes)
    if max_message_bytes is not None:
        sock.setsockopt(zmq.MAXMSGSIZE, max_message_bytes)
    if heartbeats:
        # ZMTP heartbeats: a peer that died or sits behind a partition is dropped within a few seconds
        # (its queued messages with it) and reconnected when it returns, instead of TCP's minutes.
        sock.setsockopt(zmq.HEARTBEAT_IVL, HEARTBEAT_IVL_MS)
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, HEARTBEAT_TIMEOUT_MS)
        sock.setsockopt(zmq.HEARTBEAT_TTL, HEARTBEAT_TIMEOUT_MS)
    else:
        sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
        sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, 30)
        sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, 5)
        sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, 3)
    if socket_type == zmq.ROUTER:
        # A reply to a peer that has gone away is an error we want to see, not a silent drop.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    return sock


def send_frames(sock: zmq.Socket, frames: list) -> None:
    """sock.send_multipart(frames, copy=False) without its per-frame checks and flag arithmetic, which cost
    more than the sends themselves for a message of small arrays (about 40 us a message against 17 us).
    For the messages sent every step or update: actors' transitions, the learner's requests."""
    last = len(frames) - 1
    for i, frame in enumerate(frames):
        sock.send(frame, _SEND_MORE if i < last else 0, copy=False)


def tcp_address(host: str, port: int) -> str:
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"tcp://{host}:{port}"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_secure_bind(host: str, curve_configured: bool) -> None:
    """Loopback is private to this machine; anything else must be CURVE-protected."""
    if not curve_configured and not is_loopback(host):
        raise StartupError(
            f"refusing to listen on {host}: a non-loopback address needs CurveZMQ; generate keys with "
            "distdqn-keygen and set net.curve_secret_key, net.curve_server_key and net.curve_authorized_dir "
            "(see docs/security.md), or listen on 127.0.0.1"
        )


def bind(sock: zmq.Socket, host: str, port: int, what: str) -> str:
    """Bind with a message that names the port's purpose when it is taken.

    A non-loopback host is refused unless the socket is a CURVE server (`common.security.secure_server`):
    checking here, at the one place every server binds, means no new socket can skip the rule."""
    curve = bool(sock.getsockopt(zmq.CURVE_SERVER))
    require_secure_bind(host, curve)
    address = tcp_address(host, port)
    if ":" in host:
        sock.setsockopt(zmq.IPV6, 1)
    try:
        sock.bind(address)
    except zmq.ZMQError as err:
        raise StartupError(f"cannot listen for {what} on {address}: {err.strerror}") from None
    if not is_loopback(host):
        log.info("%s listens on %s for CURVE clients with authorized keys only", what, address)
    return address


def connect(sock: zmq.Socket, host: str, port: int) -> str:
    address = tcp_address(host, port)
    if ":" in host:
        sock.setsockopt(zmq.IPV6, 1)
    sock.connect(address)
    return address


def parse_address(address: str) -> tuple[str, int]:
    """'tcp://HOST:PORT' or 'HOST:PORT' -> (host, port), with a clear error for anything else."""
    text = address.removeprefix("tcp://")
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT or tcp://HOST:PORT, got {address!r}")
    return host, int(port)


def _ports_free(host: str, base: int, count: int) -> bool:
    sockets: list[socket.socket] = []
    try:
        for port in range(base, base + count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((host, port))
    except OSError:
        return False
    finally:
        for sock in sockets:
            sock.close()
    return True


def free_port_base(count: int = 4, *, host: str = "127.0.0.1", avoid: Collection[int] = ()) -> int:
    """A base of `count` consecutive free ports (for --port-base), to run clusters side by side.

    Chosen below the kernel's ephemeral range where it allows, since an outgoing connection could take
    one of the ports between this check and the bind; bases in `avoid` (and their neighbours) are skipped.
    """
    low, high = 20000, 60000
    with contextlib.suppress(OSError, ValueError, IndexError):
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
        if ephemeral_low - low >= 2000:
            high = min(high, ephemeral_low - 8)
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(low, high - count)
        if any(abs(base - used) < count for used in avoid):
            continue
        if _ports_free(host, base, count):
            return base
    raise StartupError(f"no block of {count} free ports found on {host}")
