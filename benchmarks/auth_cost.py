"""What authentication costs replay: ingest and sampling over plain tcp, tcp+CURVE and the ipc path.

Why: per-run keys put CURVE on loopback too, and CURVE encrypts every byte. Local actors therefore push
over an ipc socket in the private run-keys directory (no CURVE needed there); this measures all three
in one run, for CartPole-shaped and Atari-shaped transitions, so the ratios mean something anywhere.
Replay is the real server in its own process; one pusher re-sends prebuilt messages, one requester
asks for batch-512 samples over the socket (no shared-memory batches, the worst case for CURVE).

    python benchmarks/auth_cost.py [--seconds 2] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import zmq
from harness.entry import base_parser, run_benchmark
from harness.processes import Children, free_port_base, zmq_context
from harness.replay_server import start_replay_server
from harness.report import print_table, ratio, write_result
from harness.traffic import ATARI, CARTPOLE, STREAM_MESSAGES, Shape, transitions_frames

NAME = "auth_cost"
SEND_SIZE = {"cartpole": 1024, "atari": 32}
CAPACITY = {"cartpole": 200_000, "atari": 20_000}
MODES = ("plain", "curve", "ipc")
MIN_SIZE = 512
REPLY_TIMEOUT_S = 60.0


def _client(ctx: zmq.Context, kind: int, role: str, mode: str):
    from common.security import ClientSecurity, secure_client
    from common.sockets import BULK_KERNEL_BUFFER, make_socket

    sock = make_socket(ctx, kind, hwm=64, kernel_buffer_bytes=BULK_KERNEL_BUFFER, heartbeats=False)
    if mode != "plain" and not (mode == "ipc" and kind == zmq.PUSH):
        secure_client(sock, ClientSecurity.from_run_keys(role))
    return sock


def _reply(sock: zmq.Socket, what: str) -> list:
    """The next message on `sock`; a reply that never comes is an error, not a benchmark that hangs."""
    if not sock.poll(int(REPLY_TIMEOUT_S * 1000)):
        raise TimeoutError(f"no {what} from the replay server within {REPLY_TIMEOUT_S:g} s")
    return sock.recv_multipart(copy=False)


def _stats(sock: zmq.Socket) -> dict:
    from common.wire import Encoder, decode

    sock.send_multipart(Encoder("bench-auth")("stats_request"))
    while True:
        msg = decode(_reply(sock, "replay_stats"), expect=("replay_stats", "batch", "error"))
        if msg.kind == "replay_stats":
            return msg.meta


def _push(push: zmq.Socket, stream: list, sent: int) -> int:
    if push.poll(100, zmq.POLLOUT):
        push.send_multipart(stream[sent % len(stream)], copy=False)
        sent += 1
    return sent


def _fill_to_min_size(push: zmq.Socket, learner: zmq.Socket, stream: list, sent: int) -> int:
    """Replay answers samples only once it holds MIN_SIZE transitions. An ingest window too short to
    store that many (a quick run on a busy machine, where a CURVE handshake alone can outlast it) is
    topped up here, outside both measurements."""
    deadline = time.monotonic() + REPLY_TIMEOUT_S
    while _stats(learner)["size"] < MIN_SIZE:
        if time.monotonic() > deadline:
            raise TimeoutError(f"replay stored fewer than {MIN_SIZE} transitions within {REPLY_TIMEOUT_S:g} s")
        sent = _push(push, stream, sent)
    return sent


def _measure(shape: Shape, mode: str, seconds: float) -> dict[str, float]:
    """(ingest transitions/s, sampled transitions/s) with one server for this mode and shape."""
    from common.run_keys import local_ingest_address
    from common.wire import Encoder

    port = free_port_base()
    overrides = [
        f"replay.capacity={CAPACITY[shape.name]}",
        f"replay.min_size={MIN_SIZE}",
        "replay.samples_per_insert=0",
    ]
    overrides.append(f"actor.send_size={SEND_SIZE[shape.name]}")
    with Children() as children, zmq_context() as ctx:
        start_replay_server(children, port, overrides, shape)
        push = _client(ctx, zmq.PUSH, "actor", mode)
        push.connect(local_ingest_address() if mode == "ipc" else f"tcp://127.0.0.1:{port + 2}")
        learner = _client(ctx, zmq.DEALER, "learner", mode)
        learner.connect(f"tcp://127.0.0.1:{port + 3}")
        stream = transitions_frames(shape, SEND_SIZE[shape.name], 0, seed=1, messages=STREAM_MESSAGES)
        start_inserted = _stats(learner)["inserted"]
        start, sent = time.monotonic(), 0
        while time.monotonic() - start < seconds:
            sent = _push(push, stream, sent)
        ingest_s = time.monotonic() - start
        inserted = _stats(learner)["inserted"] - start_inserted
        _fill_to_min_size(push, learner, stream, sent)
        encode, batches = Encoder("bench-auth"), 0
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            learner.send_multipart(encode("sample", {"batch_size": 512, "beta": 0.4}))
            _reply(learner, "batch")
            batches += 1
        sample_s = time.monotonic() - start
        push.close(linger=0)
        learner.close(linger=0)
    return {"ingest_per_s": inserted / ingest_s, "sampled_per_s": 512 * batches / sample_s}


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=0.0, help="seconds per measured window (default 2; quick 0.5)")
    parser.add_argument(
        "--rounds", type=int, default=0, help="windows per mode and shape, medians reported (default 3; quick 1)"
    )
    args = parser.parse_args()
    args.seconds = args.seconds or (0.5 if args.quick else 2.0)
    args.rounds = args.rounds or (1 if args.quick else 3)
    return args


def main() -> int:
    from common.run_keys import ENV, make_run_keys

    args = parse_args()
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="rk-", dir="/tmp") as tmp:
        keys = make_run_keys(Path(tmp) / "k")
        for shape in (CARTPOLE, ATARI):
            for mode in MODES:
                if mode == "plain":
                    os.environ.pop(ENV, None)
                else:
                    os.environ[ENV] = str(keys)  # the spawned server inherits it, as under the launcher
                rounds = [_measure(shape, mode, args.seconds) for _ in range(args.rounds)]
                results[f"{shape.name}/{mode}"] = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        os.environ.pop(ENV, None)
    rows = []
    for name, got in results.items():
        shape = name.split("/")[0]
        plain = results[f"{shape}/plain"]
        ratios = {k: ratio(got[k], plain[k]) for k in got}
        got["ratio_to_plain"] = ratios
        rows.append([name, got["ingest_per_s"], ratios["ingest_per_s"], got["sampled_per_s"], ratios["sampled_per_s"]])
    print_table(
        "replay throughput by transport (transitions/s; ratio to plain tcp)",
        ["shape/transport", "ingest", "ratio", "sampled", "ratio"],
        rows,
    )
    print("(ipc: ingest over the private ipc socket; its sampling still crosses tcp+CURVE)")
    write_result(NAME, args.json, args, results)
    return 0


if __name__ == "__main__":
    run_benchmark(main)
