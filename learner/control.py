"""The learner's control plane, in its own thread: actors join, fetch weights, report statistics.

It owns two sockets: a ROUTER where actors and evaluators say hello (and get the run config and their
global index back), ask for the current weights, and send episode statistics and evaluation results;
and the PUB socket on which every new weight version and the final stop are broadcast. Publishing from
this thread keeps the update loop from ever waiting on a slow subscriber. Each version also goes into a
shared-memory file (`common.shared_weights`), written by the update loop's own call (one copy of the
parameters, where they are going) and announced by a small `weights_ref`: actors on this host read it
from there and unsubscribe from the full weights, which this thread then copies out of the file for
actors elsewhere. The same loop logs peers whose connection to either socket is lost or comes back
(`common.monitor`); which actor went quiet is told by `report_silent_actors`, from the statistics it
stopped sending.

Peers are not trusted: who may report what is `learner.peer_roles`, what their counters may add is
`learner.actors`, how often the whole network goes out for a `get_weights` is `learner.weight_replies`,
and one message that breaks a handler is counted and logged, never the end of this thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Mapping
from functools import partial

import numpy as np
import zmq

from common.config import RunConfig
from common.monitor import ConnectionMonitor
from common.safe_log import PeerWarnings, printable
from common.security import ServerSecurity, secure_server
from common.shared_weights import (
    LayoutMismatch,
    NonFinite,
    SharedWeightsReader,
    SharedWeightsUnavailable,
    SharedWeightsWriter,
    available,
)
from common.sockets import bind, make_socket, require_secure_bind
from common.wire import DecodeError, Encoder, Message, decode, require_vectors
from learner.actors import MAX_EPISODES_PER_REPORT, ActorRecord, ActorRegistry, Refused, log_expired, log_silence
from learner.peer_roles import PeerRoles
from learner.weight_replies import WeightReplies

log = logging.getLogger(__name__)

CONTROL_KINDS = ("hello", "get_weights", "actor_stats", "eval_result")
# What the control kinds can carry: a hello or a report of MAX_EPISODES_PER_REPORT episodes is a few KB.
MAX_CONTROL_MESSAGE_BYTES = 1 << 20
REPLY_HWM = 16  # replies queued per peer (a few KB each, weights aside): a peer that does not read gets no more
MAX_PENDING_RESULTS = 10_000  # returns kept for the update loop between its reads
EXPIRY_CHECK_S = 1.0


class ControlServer(threading.Thread):
    def __init__(self, config: RunConfig, ctx: zmq.Context) -> None:
        super().__init__(name="control", daemon=True)
        require_secure_bind(config.net.bind_host, bool(config.net.curve_secret_key))
        self.config = config
        self.run_id = uuid.uuid4().hex[:12]
        self._lock = threading.Lock()
        self._weights: tuple[int, dict[str, np.ndarray]] | None = None
        self._publish_pending = False
        self._pending: tuple[int, dict[str, np.ndarray] | None, dict[str, str] | None] | None = None
        self._shared: SharedWeightsWriter | None = None  # written by the update loop's thread
        self._shared_reader: SharedWeightsReader | None = None  # read by the control thread
        self._shared_wanted = config.net.shared_memory_weights and available()
        self._shared_announced = False
        self._stop_reason: str | None = None
        self._closing = threading.Event()
        self.registry = ActorRegistry(config)
        self.roles = PeerRoles()
        self._weight_replies = WeightReplies()
        self._warnings = PeerWarnings(log)
        self.new_returns: deque[float] = deque(maxlen=MAX_PENDING_RESULTS)
        self.eval_results: deque[tuple[int, np.ndarray]] = deque(maxlen=100)
        self._rejected: Counter[str] = Counter()  # by reason, as the replay server counts them
        self.replies_dropped = 0  # to peers gone or not reading
        max_bytes = min(config.net.max_message_mb << 20, MAX_CONTROL_MESSAGE_BYTES)
        self.router = make_socket(ctx, zmq.ROUTER, hwm=1024, max_message_bytes=max_bytes)
        self.router.setsockopt(zmq.SNDHWM, REPLY_HWM)
        # No heartbeats on the broadcast: a subscriber busy for seconds (an evaluator mid-game) stops
        # reading, and libzmq then drops the connection and can abort on the reconnect (see make_socket).
        self.pub = make_socket(ctx, zmq.PUB, hwm=4, heartbeats=False)
        # With CURVE, a subscriber without an authorized key never completes the handshake: no weights.
        self.security = ServerSecurity.from_config(config.net, ctx)
        secure_server(self.router, self.security, "learner control")
        secure_server(self.pub, self.security, "weight broadcast")
        # After secure_server: this monitor replaces security's own, and counts failed handshakes for it.
        self.connections = ConnectionMonitor(log)
        refusals = self.security.refusals if self.security is not None else None
        self.connections.watch(self.router, "learner control", refusals=refusals)
        self.connections.watch(self.pub, "weight broadcast", refusals=refusals)
        self.control_address = bind(self.router, config.net.bind_host, config.net.learner_port, "learner control")
        self.weights_address = bind(self.pub, config.net.bind_host, config.net.weights_port, "weight broadcast")
        self._encode = Encoder("learner")
        # The update loop wakes this thread through an inproc pair, so a new version goes out at once.
        wake_address = f"inproc://control-wake-{id(self)}"
        self._wake_rx = ctx.socket(zmq.PAIR)
        self._wake_rx.bind(wake_address)
        self._wake_tx = ctx.socket(zmq.PAIR)
        self._wake_tx.connect(wake_address)

    # ---- called from the update loop ----------------------------------------------------------
    def set_weights(self, version: int, arrays: Mapping[str, np.ndarray], *, live: bool = False) -> None:
        """Publish a new version. `live` arrays are views of parameters the caller goes on training.

        With shared memory on, the arrays go into the file here and now, the one copy on the way to
        local actors, and the control thread copies them back out for the broadcast and `get_weights`
        after the notice is out. Otherwise live arrays are copied before this returns.
        """
        ref = self._write_shared(version, arrays)
        snapshot = None
        if ref is None or not ref["path"]:
            snapshot = {name: np.array(a) for name, a in arrays.items()} if live else dict(arrays)
        with self._lock:
            self._pending = (version, snapshot, ref)
            self._publish_pending = True
        self._wake()

    def set_shared_memory(self, enabled: bool) -> None:
        """Turn shared-memory weights on or off from the next publication (the benchmark compares both).
        Call it from the thread that calls set_weights."""
        self._shared_wanted = enabled and available()

    def _write_shared(self, version: int, arrays: Mapping[str, np.ndarray]) -> dict[str, str] | None:
        """Write the shared-memory copy; what the notice should say, or None when there is no file to name.

        Once a file has been announced, a learner that stops writing it (turned off, or /dev/shm full)
        says so in every notice from then on (an empty path), so actors that unsubscribed from the full
        weights take the broadcast again instead of waiting on a file that no longer changes."""
        if self._shared_wanted:
            try:
                if self._shared is None:
                    self._shared = SharedWeightsWriter(self.run_id, arrays)
                    self._shared_announced = True
                    log.info("weights also in shared memory for actors on this host: %s", self._shared.path)
                self._shared.write(version, arrays)
                return {"path": self._shared.path, "token": self._shared.token}
            except NonFinite as err:  # the file keeps the last good version; the broadcast's are refused
                log.warning("not sharing weights: %s", err)
                return None
            except (OSError, LayoutMismatch) as err:
                log.warning("shared-memory weights off, the broadcast carries them all: %s", err)
                self._shared_wanted = False
        if self._shared is not None:
            self._shared.close()
            self._shared = None
        return {"path": "", "token": ""} if self._shared_announced else None

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(zmq.Again):  # a wake-up is already queued
            self._wake_tx.send(b"", zmq.NOBLOCK)

    def close(self) -> None:
        self._closing.set()
        self._wake()
        self.join(timeout=5)
        self._wake_tx.close(linger=0)

    def take_statistics(self) -> tuple[list[float], list[tuple[int, np.ndarray]]]:
        """Episode returns and evaluation results that arrived since the last call."""
        with self._lock:
            returns, evals = list(self.new_returns), list(self.eval_results)
            self.new_returns.clear()
            self.eval_results.clear()
        return returns, evals

    # ---- thread -------------------------------------------------------------------------------
    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self._wake_rx, zmq.POLLIN)
        next_expiry = time.monotonic() + EXPIRY_CHECK_S
        try:
            while not self._closing.is_set():
                if self._publish_pending:
                    self._publish()
                if self._stop_reason is not None:
                    self._broadcast_stop()
                if time.monotonic() >= next_expiry:
                    self._expire_actors()
                    next_expiry = time.monotonic() + EXPIRY_CHECK_S
                events = dict(poller.poll(100))
                self.connections.quiet = self._stop_reason is not None  # at the stop, actors are meant to leave
                self.connections.poll()
                while self._wake_rx.poll(0):
                    self._wake_rx.recv()
                if self.router in events:
                    for _ in range(128):
                        try:
                            frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
                        except zmq.Again:
                            break
                        self._handle(frames)
            if self._stop_reason is not None:
                self._broadcast_stop()
        finally:
            self.connections.close()
            self._wake_rx.close(linger=0)
            self.router.close()
            self.pub.close()
            self._close_shared()
            if self.security is not None:
                self.security.close()

    def _broadcast_stop(self) -> None:
        # PUB drops for subscribers that are mid-reconnect; repeat so everyone hears it.
        frames = self._encode("stop", {"reason": self._stop_reason or "stop"})
        self.pub.send_multipart(frames)

    def _publish(self) -> None:
        with self._lock:
            self._publish_pending = False
            version, arrays, ref = self._pending  # type: ignore[misc]
        meta = {"version": version, "run_id": self.run_id}
        if ref is not None:
            self.pub.send_multipart(self._encode("weights_ref", {**meta, **ref}))
        if arrays is None:  # in the shared-memory file only: copy it out, after local actors have it
            got = self._read_shared(ref["path"], ref["token"])  # type: ignore[index]
            if got is None:
                return  # overtaken by newer versions, which are pending already
            version, arrays = got
            meta["version"] = version
        with self._lock:
            self._weights = (version, arrays)
        # PUB filters by subscription: with every actor on this host, these bytes go nowhere.
        self.pub.send_multipart(self._encode("weights", meta, arrays), copy=False)

    def _read_shared(self, path: str, token: str) -> tuple[int, dict[str, np.ndarray]] | None:
        if self._shared_reader is None or self._shared_reader.path != path:
            self._close_shared_reader()
            try:
                self._shared_reader = SharedWeightsReader(path, token)
            except SharedWeightsUnavailable as err:  # removed meanwhile: sharing was just turned off
                log.debug("shared-memory weights gone before the broadcast copy: %s", err)
                return None
        return self._shared_reader.read(attempts=10)

    def _close_shared_reader(self) -> None:
        if self._shared_reader is not None:
            self._shared_reader.close()
            self._shared_reader = None

    def _close_shared(self) -> None:
        self._close_shared_reader()
        if self._shared is not None:
            self._shared.close()
            self._shared = None

    def _reply(self, identity: bytes, frames: list) -> None:
        try:
            self.router.send_multipart([identity, *frames], copy=False, flags=zmq.NOBLOCK)
        except zmq.ZMQError as err:  # gone, or not reading: its queue is full and the reply is dropped
            self.replies_dropped += 1
            log.debug("reply failed: %s", err)

    def _count(self, reason: str) -> None:
        with self._lock:
            self._rejected[reason] += 1

    @property
    def rejected(self) -> Counter[str]:
        """Refused control messages by reason (decode errors as the replay server counts them, and the
        control plane's own refusals)."""
        with self._lock:
            return self._rejected + self.registry.refused

    def _handle(self, frames: list) -> None:
        """One message; whatever goes wrong with it is counted and logged, and the thread goes on."""
        if len(frames) < 2:
            self._count("bad_envelope")
            return
        identity = frames[0].bytes
        try:
            self._dispatch(identity, frames)
        except Refused as err:
            self._count(err.reason)
            self._warnings.warning(identity, "refused a control message: %s", printable(err, 200))
        except Exception as err:  # a bug hit by one message must not end the control plane
            self._count("handler_error")
            self._warnings.warning(identity, "error handling a control message: %s", printable(err, 200), exc_info=True)

    def _dispatch(self, identity: bytes, frames: list) -> None:
        try:
            msg = decode(frames[1:], expect=CONTROL_KINDS)
            if msg.kind == "actor_stats":
                require_vectors(msg, "episode_returns", "episode_lengths")
            elif msg.kind == "eval_result":
                require_vectors(msg, "returns", "lengths")
        except DecodeError as err:
            self._count(err.reason)
            self._warnings.warning(identity, "rejected a control message: %s", printable(err, 200))
            if err.reason in ("wrong_version", "unknown_kind", "unexpected_kind"):
                self._reply(identity, self._encode("error", {"reason": err.reason, "detail": str(err)[:200]}))
            return
        role = self.roles.authenticated(frames[1])
        if msg.kind == "hello":
            try:
                self._hello(identity, role, msg)
            except Refused as err:  # told, so that it does not wait for a welcome
                self._reply(identity, self._encode("error", {"reason": err.reason, "detail": str(err)[:200]}))
                raise
        elif msg.kind == "get_weights":
            self._get_weights(identity)
        elif msg.kind == "actor_stats":
            if self.roles.role_of(identity, role) not in (None, "actor"):  # None: taken on, as after a restart
                raise Refused("not_actor", "actor_stats from an evaluator")
            self._actor_stats(identity, msg)
        else:
            self._eval_result(identity, role, msg)

    def _hello(self, identity: bytes, authenticated: str | None, msg: Message) -> None:
        meta = msg.meta
        role = meta["role"]
        new = self.roles.declare(identity, role, authenticated)
        index, epsilon = meta["actor_index"], None
        if role == "actor":
            with self._lock:
                record, new = self.registry.join(
                    identity, meta.get("instance", ""), index, time.monotonic(), printable(meta.get("host", "?"))
                )
            index, epsilon = record.index, record.epsilon
        if new:
            joined = f"{role} {index} joined from {printable(meta.get('host', '?'))} (pid {meta.get('pid')})"
            log.info(joined + (f", epsilon {epsilon:.4g}" if epsilon is not None else ""))
        config = self.config.to_dict()
        # Key file locations are this machine's business; actors bring their own keys.
        config["net"].update(curve_secret_key="", curve_server_key="", curve_authorized_dir="")
        welcome = {"config": config, "actor_index": index, "run_id": self.run_id}
        if epsilon is not None:
            welcome["epsilon"] = epsilon
        self._reply(identity, self._encode("welcome", welcome))

    def _get_weights(self, identity: bytes) -> None:
        with self._lock:
            weights = self._weights
        if weights is None:
            self._reply(identity, self._encode("error", {"reason": "no_weights_yet"}))
            return
        encode = partial(self._encode, "weights", {"version": weights[0], "run_id": self.run_id}, weights[1])
        refusal = self._weight_replies.send(self.router, identity, weights[0], encode, time.monotonic())
        if refusal == "reply_dropped":
            self.replies_dropped += 1
        elif refusal is not None:
            self._count(refusal)

    def _actor_stats(self, identity: bytes, msg: Message) -> None:
        returns = msg.arrays["episode_returns"]
        with self._lock:
            version = self._weights[0] if self._weights is not None else -1
            self.registry.report(identity, msg.meta, len(returns), version, time.monotonic())
            self.new_returns.extend(returns.tolist())  # at most MAX_EPISODES_PER_REPORT: the registry refuses more

    def _eval_result(self, identity: bytes, authenticated: str | None, msg: Message) -> None:
        role = self.roles.role_of(identity, authenticated)
        if role != "evaluator":
            # A learner restarted since this peer's hello has not heard it: ask for it, now and then.
            if role is None and self.roles.ask_hello(identity, time.monotonic()):
                self._reply(identity, self._encode("error", {"reason": "hello_first"}))
            sender = f"an {role}" if role else "a peer that never said hello"
            raise Refused("not_evaluator", f"eval_result from {sender}")
        returns = msg.arrays["returns"]
        if len(returns) > MAX_EPISODES_PER_REPORT:
            raise Refused("too_many_episodes", f"{len(returns)} evaluation episodes")
        with self._lock:
            self.eval_results.append((msg.meta["weight_version"], np.array(returns)))

    @property
    def env_steps(self) -> int:
        """Summed from the actors' accepted increments, restarts included."""
        return self.registry.env_steps

    @property
    def unauthenticated(self) -> int:
        """Clients refused by CURVE (unknown key, plaintext, wrong server key) on both sockets."""
        return self.security.denied if self.security is not None else 0

    def _expire_actors(self) -> None:
        with self._lock:
            gone = self.registry.expire(time.monotonic())
        log_expired(gone)

    def report_silent_actors(self, silent_s: float | None = None) -> None:
        """Log once when an actor stops reporting (dead, hung or cut off) and once when it is back."""
        with self._lock:
            changed = self.registry.silence_changes(time.monotonic(), silent_s)
        log_silence(changed)

    def alive_actors(self, within_s: float = 10.0) -> list[ActorRecord]:
        now = time.monotonic()
        with self._lock:
            return [r for r in self.registry.records.values() if now - r.last_seen <= within_s]
