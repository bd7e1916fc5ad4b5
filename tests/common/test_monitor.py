"""Connection monitor: a lost peer is one WARNING, its return one INFO, on both ends of a connection."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator

import pytest
import zmq

from common.monitor import ConnectionMonitor
from common.sockets import free_port_base, make_socket

log = logging.getLogger("test.monitor")


@pytest.fixture
def ctx() -> Iterator[zmq.Context]:
    context = zmq.Context()
    yield context
    context.destroy(linger=0)


def _poll_until(monitor: ConnectionMonitor, caplog: pytest.LogCaptureFixture, text: str, timeout_s: float) -> float:
    """Poll like an owner's loop until a log line contains `text`; returns the seconds it took."""
    start = time.monotonic()
    while text not in caplog.text:
        assert time.monotonic() - start < timeout_s, f"no {text!r} within {timeout_s} s; log:\n{caplog.text}"
        monitor.poll()
        time.sleep(0.02)
    return time.monotonic() - start


def _count(caplog: pytest.LogCaptureFixture, level: int, text: str) -> int:
    return sum(1 for r in caplog.records if r.levelno == level and text in r.getMessage())


def _up(monitor: ConnectionMonitor, check: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 5
    while not check():
        assert time.monotonic() < deadline, "never connected"
        monitor.poll(force=True)
        time.sleep(0.02)


def test_a_client_reports_its_server_gone_and_back(ctx: zmq.Context, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=log.name)
    port = free_port_base(1)
    monitor = ConnectionMonitor(log)
    client = make_socket(ctx, zmq.DEALER)
    monitor.watch(client, "learner control")
    client.connect(f"tcp://127.0.0.1:{port}")
    server = make_socket(ctx, zmq.ROUTER)
    server.bind(f"tcp://127.0.0.1:{port}")
    _up(monitor, lambda: f"connection to learner control 127.0.0.1:{port}: up" in caplog.text)
    assert _count(caplog, logging.INFO, "learner control") == 0, "a first connection is not news"

    server.close(linger=0)
    _poll_until(monitor, caplog, f"connection to learner control 127.0.0.1:{port} lost", 5)
    server = make_socket(ctx, zmq.ROUTER)
    server.bind(f"tcp://127.0.0.1:{port}")
    _poll_until(monitor, caplog, f"connection to learner control 127.0.0.1:{port} re-established after", 5)
    assert _count(caplog, logging.WARNING, "lost") == 1
    assert _count(caplog, logging.INFO, "re-established") == 1
    monitor.close()


def test_a_server_names_the_client_it_lost_and_the_one_that_came_back(
    ctx: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    port = free_port_base(1)
    monitor = ConnectionMonitor(log)
    server = make_socket(ctx, zmq.ROUTER)
    monitor.watch(server, "learner control")
    server.bind(f"tcp://127.0.0.1:{port}")
    client = make_socket(ctx, zmq.DEALER)
    client.connect(f"tcp://127.0.0.1:{port}")
    client.send(b"hello")
    assert server.poll(5000)
    monitor.poll(force=True)
    assert caplog.text == "", "first connections are logged at DEBUG only"

    client.close(linger=0)
    _poll_until(monitor, caplog, f"learner control 127.0.0.1:{port}: connection from 127.0.0.1:", 5)
    assert "lost (closed by the peer, or no heartbeat for 5 s)" in caplog.text
    client = make_socket(ctx, zmq.DEALER)
    client.connect(f"tcp://127.0.0.1:{port}")
    _poll_until(monitor, caplog, "connected again after", 5)

    # While shutting down, leaving peers are expected: nothing above DEBUG.
    monitor.quiet = True
    client.close(linger=0)
    time.sleep(0.3)
    monitor.poll(force=True)
    assert _count(caplog, logging.WARNING, "lost") == 1
    monitor.close()


def test_a_failing_handshake_is_one_warning_not_one_per_retry(
    ctx: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    port = free_port_base(1)
    server = make_socket(ctx, zmq.ROUTER)  # plaintext: a CURVE client fails its handshake, again and again
    server.bind(f"tcp://127.0.0.1:{port}")
    public, secret = zmq.curve_keypair()
    server_public, _ = zmq.curve_keypair()
    client = make_socket(ctx, zmq.DEALER)
    client.setsockopt(zmq.CURVE_SECRETKEY, secret)
    client.setsockopt(zmq.CURVE_PUBLICKEY, public)
    client.setsockopt(zmq.CURVE_SERVERKEY, server_public)
    monitor = ConnectionMonitor(log)
    monitor.watch(client, "replay ingest")
    client.connect(f"tcp://127.0.0.1:{port}")
    _poll_until(monitor, caplog, f"handshake with replay ingest 127.0.0.1:{port} failed", 5)
    time.sleep(1.0)  # several reconnections and failures later
    monitor.poll(force=True)
    assert _count(caplog, logging.WARNING, "handshake with") == 1
    assert "lost" not in caplog.text, "a connection that never came up was not lost"
    monitor.close()


_STOPPABLE_SERVER = textwrap.dedent(
    """
    import sys, time, zmq
    from common.sockets import make_socket
    sock = make_socket(zmq.Context(), zmq.ROUTER)
    sock.bind(f"tcp://127.0.0.1:{sys.argv[1]}")
    print("ready", flush=True)
    while True:
        if sock.poll(100):
            sock.recv_multipart()
    """
)


@pytest.mark.slow
def test_a_hung_peer_is_reported_after_the_heartbeat_timeout(
    ctx: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGSTOP freezes the peer's ZeroMQ I/O thread while its kernel still ACKs TCP: only heartbeats see it."""
    caplog.set_level(logging.DEBUG, logger=log.name)
    port = free_port_base(1)
    peer = subprocess.Popen(
        [sys.executable, "-c", _STOPPABLE_SERVER, str(port)], stdout=subprocess.PIPE, start_new_session=True
    )
    try:
        assert peer.stdout is not None and peer.stdout.readline().strip() == b"ready"
        monitor = ConnectionMonitor(log)
        client = make_socket(ctx, zmq.DEALER)
        monitor.watch(client, "learner control")
        client.connect(f"tcp://127.0.0.1:{port}")
        _up(monitor, lambda: f"connection to learner control 127.0.0.1:{port}: up" in caplog.text)
        os.kill(peer.pid, signal.SIGSTOP)
        took = _poll_until(monitor, caplog, "lost (closed by the peer, or no heartbeat for 5 s)", 10)
        assert 4.0 <= took <= 7.5, f"reported after {took:.1f} s: heartbeats are every 1 s with a 5 s timeout"
        print(f"a hung peer was reported {took:.1f} s after SIGSTOP")
        os.kill(peer.pid, signal.SIGCONT)
        _poll_until(monitor, caplog, "re-established after", 5)
        monitor.close()
    finally:
        os.killpg(peer.pid, signal.SIGKILL)
        peer.wait(timeout=5)


def test_a_socket_without_heartbeats_says_what_a_loss_means_there(
    ctx: zmq.Context, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=log.name)
    port = free_port_base(1)
    monitor = ConnectionMonitor(log)
    client = ctx.socket(zmq.PUSH)  # no ZMTP heartbeats, like the bulk path to replay
    client.setsockopt(zmq.LINGER, 0)
    monitor.watch(client, "replay ingest")
    client.connect(f"tcp://127.0.0.1:{port}")
    server = make_socket(ctx, zmq.PULL)
    server.bind(f"tcp://127.0.0.1:{port}")
    client.send(b"x")
    assert server.poll(5000)
    server.close(linger=0)
    _poll_until(monitor, caplog, "connection to replay ingest", 5)
    assert "lost (closed by the peer, or TCP gave up); reconnecting" in caplog.text
    monitor.close()
