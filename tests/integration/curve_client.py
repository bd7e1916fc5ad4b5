"""An actor-like client for the network-namespace test: push one valid batch, then ask replay for stats.

Run as a script (in the client namespace), it prints one JSON line: {"stats": {...}} or {"stats": null}
when the replay server never answered. Key files come as paths, like the real actor's flags.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time

import numpy as np
import zmq

from common.security import ClientSecurity, secure_client
from common.sockets import make_socket
from common.wire import DecodeError, Encoder, decode


def transitions(n: int) -> dict[str, np.ndarray]:
    """A valid CartPole batch (obs of 4 float32s near the start state, inside the observation space)."""
    rng = np.random.default_rng(n)
    return {
        "obs": (0.05 * rng.standard_normal((n, 4))).astype(np.float32),
        "action": np.zeros(n, np.int64),
        "reward": np.ones(n, np.float32),
        "discount": np.full(n, 0.97, np.float32),
        "next_obs": (0.05 * rng.standard_normal((n, 4))).astype(np.float32),
        "priority": np.ones(n, np.float32),
        "version": np.zeros(n, np.int64),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--ingest-port", type=int, required=True)
    parser.add_argument("--sample-port", type=int, required=True)
    parser.add_argument("--secret-key", default="")
    parser.add_argument("--server-key", default="")
    parser.add_argument("--push-actor", type=int, default=-1, help="push 8 transitions as this actor index")
    parser.add_argument("--want-inserted", type=int, default=0, help="ask for stats until this many are stored")
    parser.add_argument("--timeout", type=float, default=5.0)
    args = parser.parse_args()
    curve = ClientSecurity.from_paths(args.secret_key, args.server_key) if args.secret_key else None
    ctx = zmq.Context()
    if args.push_actor >= 0:
        push = make_socket(ctx, zmq.PUSH, linger_ms=1000)
        secure_client(push, curve)
        push.connect(f"tcp://{args.host}:{args.ingest_port}")
        frames = Encoder("netns-actor")("transitions", {"actor_index": args.push_actor}, transitions(8))
        # Non-blocking: a refused connection is dropped, and a blocking send would then wait forever.
        if push.poll(int(args.timeout * 1000), zmq.POLLOUT):
            with contextlib.suppress(zmq.Again):  # refused between the poll and the send
                push.send_multipart(frames, zmq.NOBLOCK)
    dealer = make_socket(ctx, zmq.DEALER, linger_ms=0)
    secure_client(dealer, curve)
    dealer.connect(f"tcp://{args.host}:{args.sample_port}")
    encode = Encoder("netns-stats")
    stats = None
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(zmq.Again):  # not connected, or refused: the connection is gone for good
            dealer.send_multipart(encode("stats_request"), zmq.NOBLOCK)
        if dealer.poll(250):
            try:
                stats = decode(dealer.recv_multipart(), expect=("replay_stats",)).meta
            except DecodeError:
                continue
            if stats["inserted"] >= args.want_inserted:
                break
    print(json.dumps({"stats": stats}), flush=True)
    ctx.destroy(linger=1000)


if __name__ == "__main__":
    main()
