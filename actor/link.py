"""An actor's or evaluator's connection to the learner: join the run, then follow its weights.

Joining is a `hello` on a DEALER socket; the learner answers with the run config and the global actor
index, so a remote actor needs nothing but the learner's address. Weights arrive on a SUB socket; the
actor drains it to the newest version between environment steps (CONFLATE does not work with multipart
messages), so a slow actor never falls behind a queue of stale weights. At start the actor asks for
the current weights directly and waits for them: a late joiner never acts with random weights or waits
for the next publication.

On the learner's own host the weights come through shared memory instead (`common.shared_weights`):
the first `weights_ref` notice names the file; if this process can open it and the token matches, the
link unsubscribes from the full weights and copies each new version out of the file. Otherwise
(another machine, another user, /dev/shm missing, or a file that is not the learner's: another user's,
a link, a FIFO) it stays on the broadcast, or goes back to it, and counts the refusal.

With a relay (`actor.relay`, one per host), the link subscribes to the relay's local socket instead
of the learner's broadcast and takes each version from the relay's shared-memory file; when the relay
fails (`actor.relay_watch`) it connects to the learner's broadcast meanwhile, and leaves it again once
the relay serves new versions.

Lost and re-established connections of the link's sockets (and of any socket the actor adds with
`connections.watch`) are logged from `newest_weights`, which the actor calls between environment steps
and while it waits to send.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

import numpy as np
import zmq

from actor.relay_watch import RelayWatch
from actor.shared_weights_read import Attach, Load, RefusedFiles, read_version
from actor.welcome import Welcome, read_welcome
from common.config import RunConfig
from common.errors import StartupError
from common.monitor import ConnectionMonitor
from common.safe_log import printable
from common.security import ClientSecurity, secure_client
from common.shared_weights import HeldVersion, SharedWeightsReader, SharedWeightsUnavailable
from common.sockets import connect, is_loopback, make_socket, tcp_address
from common.wire import DecodeError, Encoder, Message, decode, kind_prefix

log = logging.getLogger(__name__)

JOIN_TIMEOUT_S = 60.0
RETRY_S = 0.5
HELLO_EVERY_S = 2.0
CONTROL_CHECK_S = 1.0
# Refusals that pass (a full roll of actors empties as silent ones expire): keep saying hello.
TRANSIENT_REFUSALS = frozenset({"too_many_actors"})


class LearnerLink:
    def __init__(
        self,
        learner_host: str,
        learner_port: int,
        *,
        role: str,
        ctx: zmq.Context,
        curve: ClientSecurity | None = None,
        shared_memory: bool = True,
        relay: str = "",
    ) -> None:
        self.learner_host = learner_host
        self.curve = curve  # this process's own keys (from its flags): the run config holds the learner's paths
        self.learner_port = learner_port
        self.role = role
        self.ctx = ctx
        self.encode = Encoder(f"{role}-{os.getpid()}")
        self.instance = secrets.token_hex(8)  # this process, on every retry of its hello
        self._hello: dict | None = None
        self._next_control_check = 0.0
        self.connections = ConnectionMonitor(log)
        self.control = make_socket(ctx, zmq.DEALER, hwm=1024, max_message_bytes=64 << 20)
        secure_client(self.control, curve)
        self.connections.watch(self.control, "learner control")
        connect(self.control, learner_host, learner_port)
        self.weights_sub: zmq.Socket | None = None
        self.version = -1
        self.learner_run_id = ""
        self.stop_reason: str | None = None
        self.rejected = 0
        self.shared_memory = shared_memory  # False: always the broadcast (benchmarks compare the two)
        self.shared: SharedWeightsReader | None = None
        self._refused = RefusedFiles()  # weights_ref files refused (not ours, not a file, ...): tried once each
        self._full_weights_subscribed = False
        self.received: Counter[str] = Counter()  # weight versions by "broadcast", "shared_memory" or "relay"
        self.relay_path = relay  # the host's relay socket (a path); empty: the learner's broadcast only
        self.relay: RelayWatch | None = None
        self._shared_from_relay = False
        self._held: HeldVersion | None = None  # the version the caller's network acts with in place
        self._held_load: Load | None = None  # the `load` that goes with it, for when its file goes
        self._broadcast_address = ""
        # One handler per broadcast kind; each returns the message if it is the newest weights so far.
        self._on_broadcast: dict[str, Callable[[Message], Message | None]] = {
            "weights": self._on_weights,
            "weights_ref": self._on_learner_ref,
            "stop": self._on_stop,
        }

    def join(self, actor_index: int, stop: threading.Event, timeout_s: float = JOIN_TIMEOUT_S) -> Welcome:
        """Say hello until the learner answers; a refusal or a silent learner is a clear StartupError.

        Every retry carries the same `instance`, so hellos that queued up while the learner was away
        are one actor to it, with one index."""
        meta = {"role": self.role, "actor_index": actor_index, "host": socket.gethostname(), "pid": os.getpid()}
        self._hello = meta = {**meta, "instance": self.instance}
        deadline = time.monotonic() + timeout_s
        next_send = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                raise StartupError(
                    f"no answer from the learner at {self.learner_host}:{self.learner_port} within {timeout_s:g} s"
                    f" ({self._curve_hint()})"
                )
            if now >= next_send:
                self._try_send(self.encode("hello", meta))
                next_send = now + HELLO_EVERY_S
            msg = self._recv(self.control, ("welcome", "error"), RETRY_S)
            if msg is None:
                continue
            if msg.kind == "error" and msg.meta["reason"] in TRANSIENT_REFUSALS:
                log.info("the learner cannot take this %s yet (%s); retrying", self.role, msg.meta["reason"])
                continue
            if msg.kind == "error":
                raise StartupError(f"the learner refused to let this {self.role} join: {msg.meta}")
            return self._welcome(msg)
        raise StartupError("interrupted while joining")

    def _welcome(self, msg: Message) -> Welcome:
        welcome = read_welcome(msg)
        self.learner_run_id = welcome.run_id
        return welcome

    def subscribe(self, config: RunConfig) -> None:
        host = config.net.public_host or self.learner_host
        if is_loopback(host) and not is_loopback(self.learner_host):
            host = self.learner_host  # the learner advertised loopback, but we reached it from elsewhere
        self.weights_sub = make_socket(
            self.ctx, zmq.SUB, hwm=4, max_message_bytes=config.net.max_message_mb << 20, heartbeats=False
        )
        for kind in ("stop", "weights_ref"):
            self.weights_sub.setsockopt(zmq.SUBSCRIBE, kind_prefix(kind))
        self._subscribe_full_weights(True)
        secure_client(self.weights_sub, self.curve)
        self.connections.watch(self.weights_sub, "weight broadcast")
        if self.relay_path and self.shared_memory:  # the learner's broadcast only while the relay fails
            self.relay = RelayWatch(self.ctx, self.relay_path, config.net.max_message_mb << 20)
            self._broadcast_address = tcp_address(host, config.net.weights_port)
            log.info("weights through the relay at %s", printable(self.relay_path, 200))
        else:
            connect(self.weights_sub, host, config.net.weights_port)

    def _subscribe_full_weights(self, on: bool) -> None:
        assert self.weights_sub is not None
        if on != self._full_weights_subscribed:
            self.weights_sub.setsockopt(zmq.SUBSCRIBE if on else zmq.UNSUBSCRIBE, kind_prefix("weights"))
            self._full_weights_subscribed = on

    def _try_send(self, frames: list) -> None:
        """Never block: after a CURVE refusal libzmq drops the connection for good, and a blocking send
        would then wait forever instead of letting the caller's deadline give a clear error."""
        try:
            self.control.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            log.debug("learner not connected; will retry")

    def _curve_hint(self) -> str:
        """A CURVE refusal looks like silence to the client, so say what to check."""
        if self.curve is None:
            return "if the learner uses CurveZMQ, pass --curve-secret-key and --curve-server-key"
        return "is this actor's public key in the servers' authorized directory, and --curve-server-key theirs?"

    def fetch_weights(self, stop: threading.Event, timeout_s: float = JOIN_TIMEOUT_S) -> Message:
        """Ask the learner for its current weights and wait until they come (or stop / time out).

        Once subscribed, weights from the broadcast do as well: the learner answers `get_weights` at a
        bounded rate, and one that is busy answering others still publishes every version."""
        deadline = time.monotonic() + timeout_s
        next_ask = 0.0
        while not stop.is_set() and time.monotonic() < deadline:
            if time.monotonic() >= next_ask:
                self._try_send(self.encode("get_weights"))
                next_ask = time.monotonic() + HELLO_EVERY_S
            # A late `welcome` answers a repeated hello from a slow start: nothing to act on.
            msg = self._recv(self.control, ("weights", "error", "welcome"), RETRY_S)
            if msg is not None and msg.kind == "weights":
                self.version = msg.meta["version"]
                self.learner_run_id = msg.meta.get("run_id", self.learner_run_id)
                return msg
            if msg is not None and msg.kind == "error":
                next_ask = min(next_ask, time.monotonic() + RETRY_S)
            broadcast = self.newest_weights() if self.weights_sub is not None else None
            if broadcast is not None:
                return broadcast
        raise StartupError(f"no weights from the learner at {self.learner_host}:{self.learner_port}")

    def newest_weights(self, load: Load | None = None, attach: Attach | None = None) -> Message | None:
        """Drain the broadcast and return the newest weights not yet taken (None if none).

        With `load` (a function copying arrays into the caller's network) they are also loaded, and
        weights in shared memory go straight from the file into the network: one copy instead of two,
        most of what a new version costs an actor. The message returned then carries no arrays. With
        `attach` as well, weights in shared memory are handed over in place instead, not copied at all,
        and `weights_whole` says whether what the network computed since is sound.
        """
        assert self.weights_sub is not None, "subscribe() first"
        self.connections.poll()
        if time.monotonic() >= self._next_control_check:
            self._serve_control()
        newest = None
        if self.relay is not None:
            self._drain_relay()
        while True:
            try:
                frames = self.weights_sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                msg = decode(frames, expect=tuple(self._on_broadcast))
            except DecodeError as err:
                self.rejected += 1
                log.warning("ignored a bad broadcast: %s", err)
                continue
            taken = self._on_broadcast[msg.kind](msg)
            if taken is not None:
                newest = taken
        if self.shared is not None:
            shared = self._take_shared(load, attach)
            if shared is not None:
                return shared
        if newest is not None and load is not None:
            load(newest.arrays)
            self._held = None
        return newest

    def weights_whole(self) -> bool:
        """False once the writer has begun to overwrite the shared-memory version the caller acts with
        in place: Q-values computed since may mix two versions, and the caller takes the newest again."""
        return self._held is None or self._held.whole()

    def _on_weights(self, msg: Message) -> Message | None:
        self.received["broadcast"] += 1
        return msg if self._accept(msg) else None

    def _on_stop(self, msg: Message) -> None:
        self.stop_reason = msg.meta["reason"]

    def _on_learner_ref(self, msg: Message) -> None:
        if self.relay is None or not self.relay.serving:  # a notice queued before we left for the relay is not
            self._follow_ref(msg)

    def _drain_relay(self) -> None:
        """The relay's notices; then follow it, or the learner while it fails."""
        assert self.relay is not None and self.weights_sub is not None
        for _ in range(64):
            try:
                frames = self.relay.sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            try:
                msg = decode(frames, expect=("weights_ref", "stop"))
            except DecodeError as err:
                self.rejected += 1
                log.warning("ignored a bad notice from the relay: %s", err)
                continue
            self.relay.note(msg)
            if msg.kind == "stop":
                self.stop_reason = msg.meta["reason"]
            elif self.relay.serving:
                self._follow_ref(msg, from_relay=True)
        latest = self.relay.latest
        refused = latest is not None and latest.meta["token"] in self._refused
        why = (
            (self.relay.failing() or ("its weights file was refused" if refused else None))
            if self.relay.serving
            else None
        )
        if why is not None:
            log.warning("the weight relay fails (%s): weights from the learner directly meanwhile", why)
            self.relay.fall_back()
            if self._shared_from_relay:
                self._close_shared()
            self._subscribe_full_weights(True)
            self.weights_sub.connect(self._broadcast_address)
        elif not self.relay.serving and not refused and self.relay.caught_up(self.version, self.learner_run_id):
            log.info("the weight relay serves again: weights through it")
            self.relay.back()
            self.weights_sub.disconnect(self._broadcast_address)
            self._close_shared()
            self._follow_ref(latest, from_relay=True)  # type: ignore[arg-type]  # caught_up: not None

    def _serve_control(self) -> None:
        """Replies outside join and fetch: a learner that restarted without hearing this process's hello
        asks for it again (an evaluator's results count only after it); late answers are dropped."""
        self._next_control_check = time.monotonic() + CONTROL_CHECK_S
        while True:
            try:
                frames = self.control.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                msg = decode(frames, expect=("welcome", "weights", "error"))
            except DecodeError as err:
                self.rejected += 1
                log.warning("ignored a bad reply from the learner: %s", err)
                continue
            if msg.kind == "error" and msg.meta["reason"] == "hello_first" and self._hello is not None:
                log.info("the learner asks this %s to say hello again", self.role)
                self._try_send(self.encode("hello", self._hello))

    def _follow_ref(self, msg: Message, from_relay: bool = False) -> None:
        """A notice of weights in shared memory: map the file if it is new to us and usable."""
        token = msg.meta["token"]
        if not msg.meta["path"]:  # the learner stopped writing its file: back to the broadcast
            if self.shared is not None:
                log.info("the learner stopped sharing weights in memory: taking them by broadcast")
                self._close_shared()
                self._subscribe_full_weights(True)
            return
        if not self.shared_memory or token in self._refused:
            return
        if self.shared is not None and self.shared.token == token:
            return
        try:
            reader = SharedWeightsReader(msg.meta["path"], token)
        except SharedWeightsUnavailable as err:
            self._refused.add(token, msg.meta["run_id"], err)
            self._close_shared()
            self._subscribe_full_weights(True)
            return
        self._close_shared()
        self.shared = reader
        self._shared_from_relay = from_relay
        self._subscribe_full_weights(False)
        log.info("weights of run %s from shared memory %s", reader.run_id, reader.path)

    def _take_shared(self, load: Load | None, attach: Attach | None) -> Message | None:
        """The file's newest version if newer than ours (or if the one held in place was overtaken):
        attached in place with `attach`, else loaded with `load` if given, else copied."""
        assert self.shared is not None
        run_id, newest = self.shared.run_id, self.shared.newest_version()
        overtaken = not self.weights_whole()
        if newest < 0 or (run_id == self.learner_run_id and newest <= self.version and not overtaken):
            return None
        held = self.shared.hold() if attach is not None else None
        if held is not None:
            attach(held.arrays)
            self._held, self._held_load, got = held, load, (held.version, {})
        else:
            got = read_version(self.shared, load)
            self._held = None
        if got is None:
            if load is not None:
                self.version = -1  # what `load` left in the network is no version at all: take the next whole
            return None
        version, arrays = got
        msg = Message(
            kind="weights", sender="shared-memory", seq=0, meta={"version": version, "run_id": run_id}, arrays=arrays
        )
        self._accept(msg)
        self.received["relay" if self._shared_from_relay else "shared_memory"] += 1
        return msg

    @property
    def shared_refused(self) -> int:
        return self._refused.count

    def _close_shared(self) -> None:
        if self.shared is not None:
            self._release_held()
            self.shared.close()
            self.shared = None

    def _release_held(self) -> None:
        """Before its file goes: the network's own copy of the version it acted with in place, since no
        newer one will come from that file to replace it when the writer overwrites it."""
        held, self._held = self._held, None
        if held is None or self._held_load is None:
            return
        self._held_load(held.arrays)
        if not held.whole():
            self.version = -1  # overtaken while copied: no version at all, take the next whole one

    def _accept(self, msg: Message) -> bool:
        """Newer weights from the same learner, or any weights from a restarted one (a new run_id):
        a learner resumed from a checkpoint counts versions from the checkpoint's, maybe lower."""
        run_id = msg.meta.get("run_id", self.learner_run_id)
        if run_id == self.learner_run_id and msg.meta["version"] <= self.version:
            return False
        if run_id != self.learner_run_id:
            log.info("the learner restarted (run %s): taking its weights v%d", run_id, msg.meta["version"])
            self.learner_run_id = run_id
        self.version = msg.meta["version"]
        return True

    def send(self, kind: str, meta: dict, arrays: dict[str, np.ndarray]) -> bool:
        """Statistics to the learner; dropped (not blocking) if the learner is not reading. Whether sent."""
        try:
            self.control.send_multipart(self.encode(kind, meta, arrays), zmq.NOBLOCK)
        except zmq.Again:
            log.debug("learner not reading; %s dropped", kind)
            return False
        return True

    def _recv(self, sock: zmq.Socket, expect: tuple[str, ...], timeout_s: float) -> Message | None:
        if not sock.poll(int(timeout_s * 1000)):
            return None
        frames = sock.recv_multipart(copy=False)
        try:
            return decode(frames, expect=expect)
        except DecodeError as err:
            self.rejected += 1
            log.warning("ignored a bad reply from the learner: %s", err)
            return None

    def close(self) -> None:
        self.connections.close()
        self.control.close()
        if self.weights_sub is not None:
            self.weights_sub.close()
        if self.relay is not None:
            self.relay.close()
        self._close_shared()
