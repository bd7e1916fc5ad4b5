"""Replay's counters once a second, from inside the servers' (network namespace) host, to a JSON-lines file.

Why a process of its own: in the namespace mode the servers' addresses exist only inside their
namespace, so the benchmark cannot ask them from where it runs; this watcher runs there (as any
operator tool would, with an authorized key) and appends one line per shard and second:
{"shard": K, "t": MONOTONIC_S, "inserted": N, ...replay_stats}.

    python -m harness.replay_watch --host H --ports P[,P...] --out PATH --secret-key F --server-key F
"""

from __future__ import annotations

import argparse
import json
import signal
import time

import zmq


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--ports", required=True, help="comma-separated sample ports, one per shard")
    parser.add_argument("--out", required=True)
    parser.add_argument("--secret-key", default="")
    parser.add_argument("--server-key", default="")
    args = parser.parse_args()
    from common.security import ClientSecurity, secure_client
    from common.sockets import connect, make_socket
    from common.wire import DecodeError, Encoder, decode

    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    curve = ClientSecurity.from_paths(args.secret_key, args.server_key) if args.secret_key else None
    ctx = zmq.Context()
    encode = Encoder("bench-replay-watch")
    socks = []
    for port in (int(p) for p in args.ports.split(",")):
        sock = make_socket(ctx, zmq.DEALER, hwm=64)
        secure_client(sock, curve)
        connect(sock, args.host, port)
        socks.append(sock)
    with open(args.out, "a", buffering=1) as out:
        while not stop:
            for shard, sock in enumerate(socks):
                try:
                    sock.send_multipart(encode("stats_request"), zmq.NOBLOCK)
                except zmq.Again:  # not connected yet
                    continue
                if sock.poll(2000):
                    frames = sock.recv_multipart(copy=False)
                    try:
                        msg = decode(frames, expect=("replay_stats",))
                    except DecodeError:
                        continue
                    out.write(json.dumps({"shard": shard, "t": time.monotonic(), **msg.meta}) + "\n")
            time.sleep(1.0)
    ctx.destroy(linger=0)


if __name__ == "__main__":
    main()
