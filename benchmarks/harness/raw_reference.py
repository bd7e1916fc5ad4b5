"""The physical reference for replay ingest: raw PUSH/PULL with the same messages, nothing else.

Why: a replay ingest rate means something on any machine only next to what the same sockets carry
on the same machine in the same minutes; with distdqn's socket options (HWM, capped kernel buffers)
the ratio is replay's own cost, with ZeroMQ's defaults it shows what the options cost.
"""

from __future__ import annotations

import time
from typing import Any

import zmq

from harness.processes import (
    MP,
    READY_TIMEOUT_S,
    Children,
    Event,
    free_port_base,
    shared_counters,
    shared_floats,
    wait_for,
)
from harness.traffic import STREAM_MESSAGES, Shape, pusher_main, transitions_frames

SETTLE_S = 0.5  # after traffic starts or changes, before a window opens


def sink_main(port: int, distdqn_options: bool, send_hwm: int, received: Any, stop: Event, ready: Event) -> None:
    """The raw reference receiver: PULL and count, nothing else. `distdqn_options` makes the socket like the
    replay server's ingest socket (HWM, capped kernel buffers); otherwise ZeroMQ's defaults."""
    from common.sockets import BULK_KERNEL_BUFFER, bind, make_socket

    ctx = zmq.Context()
    if distdqn_options:
        sock = make_socket(ctx, zmq.PULL, hwm=send_hwm, kernel_buffer_bytes=BULK_KERNEL_BUFFER)
    else:
        sock = ctx.socket(zmq.PULL)
        sock.setsockopt(zmq.LINGER, 0)
    bind(sock, "127.0.0.1", port, "benchmark sink")
    ready.set()
    try:
        while not stop.is_set():
            if not sock.poll(100):
                continue
            for _ in range(256):
                try:
                    sock.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                received[0] += 1
    finally:
        sock.close(linger=0)
        ctx.term()


def raw_pusher_main(index: int, port: int, shape: Shape, send_size: int, sent: Any, stop: Event) -> None:
    """A pusher with ZeroMQ's default socket options, for the default-options reference."""
    stream = transitions_frames(shape, send_size, index, seed=1000 + index, messages=STREAM_MESSAGES)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.connect(f"tcp://127.0.0.1:{port}")
    try:
        while not stop.is_set():
            if push.poll(100, zmq.POLLOUT):
                push.send_multipart(stream[sent[index] // send_size % len(stream)], copy=False)
                sent[index] += send_size
    finally:
        push.close(linger=0)
        ctx.term()


def measure_raw(
    children: Children,
    shape: Shape,
    send_size: int,
    pushers: int,
    send_hwm: int,
    duration: float,
    repeats: int,
    distdqn_options: bool,
) -> list[float]:
    """Messages/s through raw PUSH/PULL, one sample per window."""
    port = free_port_base(1)
    received = shared_counters(1)
    sink_stop, ready = MP.Event(), MP.Event()
    sink = children.spawn(
        "sink", sink_main, port, distdqn_options, send_hwm, received, sink_stop, ready, stop=sink_stop
    )
    wait_for(ready.is_set, READY_TIMEOUT_S, "the raw sink", children)
    sent = shared_counters(pushers)
    push_stop = MP.Event()
    procs = []
    for i in range(pushers):
        if distdqn_options:
            no_limit = shared_floats(1)
            args = (i, port, shape, send_size, send_hwm, no_limit, sent, push_stop, 0)
            procs.append(children.spawn(f"raw-pusher-{i}", pusher_main, *args, stop=push_stop))
        else:
            args = (i, port, shape, send_size, sent, push_stop)
            procs.append(children.spawn(f"raw-pusher-{i}", raw_pusher_main, *args, stop=push_stop))
    wait_for(lambda: received[0] >= 4 * pushers, READY_TIMEOUT_S, "raw traffic", children)
    time.sleep(SETTLE_S)
    samples = []
    for _ in range(repeats):
        m0, t0 = received[0], time.monotonic()
        time.sleep(duration)
        m1, t1 = received[0], time.monotonic()
        samples.append((m1 - m0) / (t1 - t0))
    children.stop([*procs, sink])
    return samples
