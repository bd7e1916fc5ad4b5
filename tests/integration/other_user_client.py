"""What another local user can do to a run: run under that uid (a script, or `attempt_all`), it tries every port.

It tries the run-keys directory first (it should not be able to list it, so it has no key but one it
makes up), then each server as a plaintext client and as a CURVE client with a key of its own and a
guessed server key: hello on control, subscribe to weights, push transitions, ask replay for a batch.
Prints one JSON line saying what it got back.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os

import zmq

from common.sockets import make_socket
from common.wire import Encoder
from tests.integration.curve_client import transitions


def _curve(sock: zmq.Socket, curve: bool) -> None:
    if curve:
        public, secret = zmq.curve_keypair()
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SERVERKEY, zmq.curve_keypair()[0])  # the real one is in the private dir


def _attempt(ctx: zmq.Context, base: int, curve: bool, wait_ms: int) -> dict[str, bool]:
    encode = Encoder("intruder")
    got: dict[str, bool] = {}  # queued_push: only that libzmq took it to send, never that it arrived
    control = make_socket(ctx, zmq.DEALER, linger_ms=0)
    _curve(control, curve)
    control.connect(f"tcp://127.0.0.1:{base}")
    with contextlib.suppress(zmq.Again):
        control.send_multipart(encode("hello", {"role": "actor", "actor_index": 0}), zmq.NOBLOCK)
    sub = make_socket(ctx, zmq.SUB, linger_ms=0)
    _curve(sub, curve)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{base + 1}")
    push = make_socket(ctx, zmq.PUSH, linger_ms=0)
    _curve(push, curve)
    push.connect(f"tcp://127.0.0.1:{base + 2}")
    got["queued_push"] = False
    if push.poll(wait_ms, zmq.POLLOUT):
        with contextlib.suppress(zmq.Again):
            push.send_multipart(encode("transitions", {"actor_index": 0}, transitions(8)), zmq.NOBLOCK)
            got["queued_push"] = True
    sample = make_socket(ctx, zmq.DEALER, linger_ms=0)
    _curve(sample, curve)
    sample.connect(f"tcp://127.0.0.1:{base + 3}")
    with contextlib.suppress(zmq.Again):
        sample.send_multipart(encode("sample", {"batch_size": 4, "beta": 0.4}), zmq.NOBLOCK)
    got["control_reply"] = bool(control.poll(wait_ms))
    got["weights"] = bool(sub.poll(wait_ms))
    got["sample_reply"] = bool(sample.poll(wait_ms))
    for sock in (control, sub, push, sample):
        sock.close(linger=0)
    return got


def attempt_all(port_base: int, keys: str, wait_ms: int) -> dict:
    result: dict = {"uid": os.getuid()}
    try:
        result["keys_listed"] = sorted(os.listdir(keys))
    except PermissionError:
        result["keys_listed"] = None
    ctx = zmq.Context()
    result["plain"] = _attempt(ctx, port_base, False, wait_ms)
    result["curve"] = _attempt(ctx, port_base, True, wait_ms)
    ctx.destroy(linger=0)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port-base", type=int, required=True)
    parser.add_argument("--keys", required=True)
    parser.add_argument("--wait-ms", type=int, default=2000)
    args = parser.parse_args()
    print(json.dumps(attempt_all(args.port_base, args.keys, args.wait_ms)), flush=True)


if __name__ == "__main__":
    main()
