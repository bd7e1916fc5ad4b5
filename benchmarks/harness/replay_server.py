"""The real replay server in a child process, and a probe that reads its counters as an operator would.

Why not `python -m replay`: it needs a real env id to learn the observation shape, and Atari ones are
not installed; a benchmark hands the server its `Shape` instead.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import zmq

from harness.processes import MP, READY_TIMEOUT_S, Children, Event, wait_for
from harness.traffic import Shape, run_config


def replay_server_main(
    port_base: int, overrides: list[str], shape: Shape, stop: Event, ready: Event, profile_path: str
) -> None:
    """The real ReplayServer for an arbitrary observation shape, optionally under cProfile."""
    from replay.server import ReplayServer

    server = ReplayServer(run_config(port_base, overrides), shape.env_spec())
    ready.set()
    profiler = None
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        server.run(stop, log_interval_s=3600.0)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_path)
        server.close()


def start_replay_server(
    children: Children, port_base: int, overrides: list[str], shape: Shape, profile_path: str = ""
) -> Any:
    stop, ready = MP.Event(), MP.Event()
    process = children.spawn(
        "replay", replay_server_main, port_base, overrides, shape, stop, ready, profile_path, stop=stop
    )
    wait_for(ready.is_set, READY_TIMEOUT_S, "the replay server to bind", children)
    return process


class ReplayProbe:
    """Reads the replay server's counters with `stats_request`, as any operator tool would."""

    def __init__(self, ctx: zmq.Context, port: int) -> None:
        from common.sockets import connect, make_socket
        from common.wire import Encoder

        self.sock = make_socket(ctx, zmq.DEALER, hwm=64)
        connect(self.sock, "127.0.0.1", port)
        self.encode = Encoder("bench-probe")

    def stats(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The server's `replay_stats` meta, plus `t`: when the answer arrived (time.monotonic)."""
        from common.wire import DecodeError, decode

        self.sock.send_multipart(self.encode("stats_request"))
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            frames = self.sock.recv_multipart(copy=False)
            with contextlib.suppress(DecodeError):
                msg = decode(frames, expect=("replay_stats",))
                return {**msg.meta, "t": time.monotonic()}
        raise TimeoutError(f"no replay_stats within {timeout_s:g} s")

    def close(self) -> None:
        self.sock.close(linger=0)
