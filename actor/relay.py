"""`python -m actor.relay`: one weight relay per actor host, so the learner sends each version once per host.

Why: every actor on a host other than the learner's subscribes to the full weights, so with eight actors
there the learner's PUB sends every version eight times over the network (Ape-X's actors sit many to a
machine). The relay is that host's one subscriber: it receives each `weights` message, checks it, writes
it into a 0600 shared-weights file (`common.shared_weights`, as the learner does for its own host) and
republishes a small `weights_ref` naming the file, plus the learner's `stop`, to the local actors.

It also asks the learner directly (`get_weights` on its control port), as an actor does when it joins:
at start, so that a relay started after the learner's last publication has a version at once, and after
ASK_S without a new one, saying which version it holds, so that the learner answers `up_to_date` in 38
bytes while it is not publishing (waiting for data, or publishing rarely). Each such answer counts in
the notice's `confirmed`, which tells the actors that the relay is current though nothing new came; a
learner that has a newer version sends it, which also covers versions the broadcast dropped.

Its local PUB listens on an `ipc://` socket inside a private (0700) directory, the run-keys directory
by default: no other user can connect to it or create one in its place, so it needs no CURVE. Towards
the learner it is an ordinary weights subscriber with this host's actor keys. What it receives is not
trusted: a message that fails decoding (malformed, non-finite), a run id that could not name a file, or
arrays that do not fit the run's layout are counted by reason and never republished. While it has a
version it repeats the newest notice every ANNOUNCE_S, so actors can tell a live relay from a dead one
(`actor.relay_watch`).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import zmq

from common.cli import _Parser
from common.errors import ConfigError, StartupError
from common.monitor import ConnectionMonitor
from common.process import install_stop_handlers, run_cli, setup_logging
from common.run_keys import IPC_PATH_MAX, check_private_dir, run_keys_dir
from common.safe_log import PeerWarnings, printable
from common.security import ClientSecurity, secure_client
from common.shared_weights import ALLOWED_DTYPES, LayoutMismatch, NonFinite, SharedWeightsWriter
from common.sockets import check_libzmq, connect, make_socket, parse_address
from common.wire import DecodeError, Encoder, Message, decode, kind_prefix

log = logging.getLogger("relay")

SOCKET_NAME = "relay.sock"
ANNOUNCE_S = 1.0  # the newest notice again: actors take 3 s without one for a dead relay
STOP_REPEAT_S = 3.0  # after the learner's stop, pass it on this long (PUB drops for reconnecting actors)
REPORT_S = 30.0
ASK_S = 5.0  # no new version this long: ask the learner whether it has one (actors go direct at 15 s)
RECONNECT_S = 5.0  # a connection to the learner lost this long is made anew (libzmq gives up after some errors)
DEFAULT_MAX_MESSAGE_MB = 256  # net.max_message_mb's default: the relay is not told the run's config
RUN_ID = re.compile(r"[0-9a-f]{1,64}")  # it names the file: `distdqn-weights-RUNID-TOKEN`


def socket_path(directory: str | Path) -> Path:
    return Path(directory).resolve() / SOCKET_NAME


class WeightRelay:
    """Learner's PUB -> checked `weights` -> shared-weights file -> `weights_ref` on a local PUB."""

    def __init__(
        self,
        ctx: zmq.Context,
        learner_host: str,
        learner_port: int,
        weights_port: int,
        directory: Path,
        *,
        curve: ClientSecurity | None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_MB << 20,
    ) -> None:
        check_private_dir(directory)  # only the owner may reach (or replace) the socket in it
        self.path = socket_path(directory)
        if len(str(self.path).encode()) > IPC_PATH_MAX:
            raise StartupError(
                f"relay socket path too long for a Unix socket ({len(str(self.path))} bytes): {self.path}"
            )
        self.encode = Encoder(f"relay-{os.getpid()}")
        self.connections = ConnectionMonitor(log)
        self.sub = make_socket(ctx, zmq.SUB, hwm=4, max_message_bytes=max_message_bytes, heartbeats=False)
        for kind in ("stop", "weights"):
            self.sub.setsockopt(zmq.SUBSCRIBE, kind_prefix(kind))
        secure_client(self.sub, curve)
        self.connections.watch(self.sub, "weight broadcast")
        self.upstream = connect(self.sub, learner_host, weights_port)
        self._next_reconnect = 0.0
        self.control = make_socket(ctx, zmq.DEALER, hwm=4, max_message_bytes=max_message_bytes)
        secure_client(self.control, curve)
        self.connections.watch(self.control, "learner control")
        connect(self.control, learner_host, learner_port)
        self._next_ask = 0.0
        self.confirmed = 0
        self.pub = make_socket(ctx, zmq.PUB, hwm=4, heartbeats=False)
        try:
            self.pub.bind(f"ipc://{self.path}")
        except zmq.ZMQError as err:
            self.sub.close()
            self.pub.close()
            raise StartupError(f"cannot listen for local actors on ipc://{self.path}: {err.strerror}") from None
        os.chmod(self.path, 0o600)
        self._socket_inode = self.path.stat().st_ino  # removed at close only if still ours
        self.writer: SharedWeightsWriter | None = None
        self.version = -1
        self.run_id = ""
        self.ref: list | None = None  # the newest notice's frames
        self.stop_reason: str | None = None
        self.received = 0
        self.republished = 0
        self.rejected: Counter[str] = Counter()
        self._warnings = PeerWarnings(log)

    def run(self, stop: threading.Event) -> None:
        next_announce = next_report = time.monotonic()
        stop_until = None
        poller = zmq.Poller()
        poller.register(self.sub, zmq.POLLIN)
        poller.register(self.control, zmq.POLLIN)
        while not stop.is_set():
            events = dict(poller.poll(100))
            if self.sub in events:
                self._drain()
            if self.control in events:
                self._answers()
            self.connections.poll()
            now = time.monotonic()
            self._reconnect_if_lost(now)
            self._ask_if_quiet(now)
            if self.stop_reason is not None:
                stop_until = stop_until or now + STOP_REPEAT_S
                self.pub.send_multipart(self.encode("stop", {"reason": self.stop_reason}))
                if now >= stop_until:
                    log.info("the learner stopped the run (%s): relay exits", printable(self.stop_reason, 200))
                    return
            elif self.ref is not None and now >= next_announce:
                self.pub.send_multipart(self.ref)
                next_announce = now + ANNOUNCE_S
            if now >= next_report:
                self.report()
                next_report = now + REPORT_S

    def _reconnect_if_lost(self, now: float) -> None:
        """An oversized message makes libzmq close the connection for good; connect again ourselves."""
        lost = self.connections.lost_since("weight broadcast")
        if lost is None or now - lost < RECONNECT_S or now < self._next_reconnect:
            return
        self._next_reconnect = now + RECONNECT_S
        log.info("connection to the learner's broadcast lost for %.0f s: connecting again", now - lost)
        with contextlib.suppress(zmq.ZMQError):
            self.sub.disconnect(self.upstream)
        self.sub.connect(self.upstream)

    def _ask_if_quiet(self, now: float) -> None:
        """Ask the learner for anything newer after ASK_S without a new version (at once when it has none)."""
        if now < self._next_ask or self.stop_reason is not None:
            return
        self._next_ask = now + ASK_S
        meta = {"newer_than": self.version, "run_id": self.run_id} if self.version >= 0 else {}
        with contextlib.suppress(zmq.Again):  # the learner is not reading: the next turn asks again
            self.control.send_multipart(self.encode("get_weights", meta), zmq.NOBLOCK)

    def _answers(self) -> None:
        for msg in self._received(self.control, ("weights", "error"), 8):
            if msg.kind == "weights":
                ours = (self.run_id, self.version)
                self._take_checked(msg)
                if (msg.meta.get("run_id"), msg.meta["version"]) == ours:
                    self._confirm()  # its current version is the one we hold
            elif msg.meta["reason"] == "up_to_date":
                self._confirm()

    def _confirm(self) -> None:
        """The learner says our version is its newest: tell the actors, so they do not take us for stale."""
        if self.writer is not None:
            self.confirmed += 1
            self._announce()

    def _announce(self) -> None:
        """The notice of the newest version, sent now and kept for the repeats."""
        assert self.writer is not None
        meta = {"version": self.version, "run_id": self.run_id, "path": self.writer.path, "token": self.writer.token}
        self.ref = self.encode("weights_ref", {**meta, "confirmed": self.confirmed})
        self.pub.send_multipart(self.ref)

    def report(self) -> None:
        rejected = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected.items())) or "none"
        log.info(
            "relay: %d weights received, %d versions republished (newest v%d), rejected: %s",
            self.received,
            self.republished,
            self.version,
            rejected,
        )

    def _drain(self) -> None:
        for msg in self._received(self.sub, ("weights", "stop"), 64):
            if msg.kind == "stop":
                self.stop_reason = msg.meta["reason"][:200]
            else:
                self._take_checked(msg)

    def _received(self, sock: zmq.Socket, kinds: tuple[str, ...], most: int) -> Iterator[Message]:
        """Up to `most` waiting messages of `kinds`; the others, and any that fail decoding, refused."""
        for _ in range(most):
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                yield decode(frames, expect=kinds)
            except DecodeError as err:
                self._reject(err.reason, str(err))

    def _take_checked(self, msg: Message) -> None:
        try:
            self._take(msg)
        except Exception as err:  # one message that breaks the handler is refused, never the end
            self._reject("handler_error", f"{type(err).__name__}: {err}")

    def _take(self, msg: Message) -> None:
        self.received += 1
        run_id, version = msg.meta.get("run_id", ""), msg.meta["version"]
        if not isinstance(run_id, str) or not RUN_ID.fullmatch(run_id):
            return self._reject("bad_run_id", f"run_id {printable(run_id)}")
        if version < 0:
            return self._reject("bad_version", f"version {version}")
        if run_id == self.run_id and version <= self.version:
            return  # a repeat (a restarted relay may hear one): nothing new for the actors
        arrays = msg.arrays
        if not arrays:
            return self._reject("no_arrays", "weights without arrays")
        bad = [name for name, a in arrays.items() if a.dtype.name not in ALLOWED_DTYPES]
        if bad:
            return self._reject("bad_dtype", f"{printable(bad[0])} is {arrays[bad[0]].dtype.name}")
        if self.writer is not None and run_id != self.writer.run_id:
            log.info("the learner restarted (run %s): a new weights file", run_id)
            self.writer.close()
            self.writer = None
        try:
            if self.writer is None:
                self.writer = SharedWeightsWriter(run_id, arrays)
                log.info("weights of run %s for this host's actors in %s", run_id, self.writer.path)
            layout = {name: dtype for name, dtype, _, _ in self.writer.layout}
            if set(layout) != set(arrays) or any(arrays[n].dtype.name != d for n, d in layout.items()):
                raise LayoutMismatch("dtypes differ from the file's")
            self.writer.write(version, arrays)
        except LayoutMismatch as err:
            return self._reject("layout_mismatch", str(err))
        except NonFinite as err:
            return self._reject("non_finite", str(err))
        except OSError as err:
            log.warning("cannot write the shared weights file: %s", err)
            return self._reject("write_failed", str(err))
        self.version, self.run_id = version, run_id
        self._announce()
        self.republished += 1
        self._next_ask = time.monotonic() + ASK_S

    def _reject(self, reason: str, detail: str) -> None:
        self.rejected[reason] += 1
        self._warnings.warning(
            b"learner",
            "relay refused weights (%s): %s [%d refused so far]",
            reason,
            printable(detail, 200),
            sum(self.rejected.values()),
        )

    def close(self) -> None:
        self.connections.close()
        self.sub.close()
        self.control.close(linger=0)
        self.pub.close()
        with contextlib.suppress(OSError):  # a dead socket file would look like a live relay to actors
            if self.path.stat().st_ino == self._socket_inode:
                self.path.unlink()
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _parse() -> argparse.Namespace:
    parser = _Parser(
        prog="distdqn-relay",
        description="Weight relay: one subscriber to the learner per host, weights to local actors via shared memory.",
        epilog="examples:\n"
        "  DISTDQN_RUN_KEYS=RUN_DIR/keys python -m actor.relay --learner 127.0.0.1:5550\n"
        "  python -m actor.relay --learner gpu-box:5550 --socket-dir DIR \\\n"
        "      --curve-secret-key keys/host-b.key_secret --curve-server-key keys/server.key\n"
        "  then: python -m actor --learner gpu-box:5550 --relay DIR/relay.sock ...\n",
    )
    parser.add_argument("--learner", default="127.0.0.1:5550", help="learner control address HOST:PORT")
    parser.add_argument(
        "--weights-port", type=int, default=0, help="the learner's weight broadcast port (default: learner port + 1)"
    )
    parser.add_argument(
        "--socket-dir", default="", metavar="DIR", help="private (0700) directory for relay.sock (default: run keys)"
    )
    parser.add_argument("--max-message-mb", type=int, default=DEFAULT_MAX_MESSAGE_MB, help="largest weights message")
    parser.add_argument("--curve-secret-key", default="", metavar="PATH", help="this host's actor NAME.key_secret")
    parser.add_argument("--curve-server-key", default="", metavar="PATH", help="the servers' public NAME.key")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser.parse_args()


def _main() -> int:
    args = _parse()
    try:
        host, port = parse_address(args.learner)
    except ValueError as err:
        raise ConfigError(f"--learner: {err}") from None
    weights_port = args.weights_port or port + 1
    if not 1 <= weights_port <= 65535:
        raise ConfigError(f"--weights-port: must be in [1, 65535], got {weights_port}")
    if not 1 <= args.max_message_mb <= 4096:
        raise ConfigError(f"--max-message-mb: must be in [1, 4096], got {args.max_message_mb}")
    if bool(args.curve_secret_key) != bool(args.curve_server_key):
        raise ConfigError("--curve-secret-key and --curve-server-key go together (CurveZMQ needs both)")
    if args.curve_secret_key:
        curve = ClientSecurity.from_paths(args.curve_secret_key, args.curve_server_key)
    else:
        curve = ClientSecurity.from_run_keys("actor")  # the actors' own key: a relay may do what they may
    directory = Path(args.socket_dir) if args.socket_dir else run_keys_dir()
    if directory is None:
        raise ConfigError("--socket-dir DIR (a private directory) is needed without DISTDQN_RUN_KEYS")
    setup_logging("relay", verbose=args.verbose)
    check_libzmq()
    stop = install_stop_handlers()
    ctx = zmq.Context()
    relay = WeightRelay(
        ctx, host, port, weights_port, directory, curve=curve, max_message_bytes=args.max_message_mb << 20
    )
    log.info("relaying weights from %s to ipc://%s", relay.upstream, relay.path)
    try:
        relay.run(stop)
    finally:
        relay.report()
        relay.close()
        ctx.destroy(linger=500)
        logging.shutdown()
    return 0


def main() -> None:
    sys.exit(run_cli(_main))


if __name__ == "__main__":
    main()
