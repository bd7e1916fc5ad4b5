"""The learner's control plane, in its own thread: actors join, fetch weights, report statistics.

It owns two sockets: a ROUTER where actors and evaluators say hello (and get the run config and their
global index back), ask for the current weights, and send episode statistics and evaluation results;
and the PUB socket on which every new weight version and the final stop are broadcast. Publishing from
this thread keeps the update loop from ever waiting on a slow subscriber. Each version also goes into a
shared-memory file, written by the update loop's own call and announced by a small `weights_ref`
(`learner.weight_broadcast`). The same loop logs peers whose connection to either socket is lost or
comes back (`common.monitor`); which actor went quiet is told by `report_silent_actors`, from the
statistics it stopped sending.

Each message kind has its handler in one table, and a message turned down is counted, logged and, where
its sender would otherwise wait, answered in one place (`_reject`). Peers are not trusted: who may
report what is `learner.peer_roles`, what their counters may add is `learner.actors`, how often the
whole network goes out for a `get_weights` is `learner.weight_replies`, and one message that breaks a
handler is counted and logged, never the end of this thread.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from functools import partial

import numpy as np
import zmq

from common.config import RunConfig
from common.monitor import ConnectionMonitor
from common.safe_log import PeerWarnings, printable
from common.security import ServerSecurity, secure_server
from common.sockets import bind, make_socket, require_secure_bind
from common.wire import DecodeError, Encoder, Message, decode, require_vectors
from learner.actors import MAX_EPISODES_PER_REPORT, ActorRecord, ActorRegistry, Refused, log_expired, log_silence
from learner.peer_roles import PeerRoles
from learner.weight_broadcast import WeightBroadcast, WeightRef
from learner.weight_replies import WeightReplies

log = logging.getLogger(__name__)

CONTROL_KINDS = ("hello", "get_weights", "actor_stats", "eval_result")
# Arrays that handlers index by, so they must be one-dimensional (the schema fixes only the first dim).
VECTORS = {"actor_stats": ("episode_returns", "episode_lengths"), "eval_result": ("returns", "lengths")}
# Decode errors the peer is told of: it speaks another protocol, and retrying will not help.
TOLD_DECODE_ERRORS = frozenset({"wrong_version", "unknown_kind", "unexpected_kind"})
# Kinds whose refusal the peer is told of: a refused hello would otherwise wait for a welcome.
TOLD_REFUSALS = frozenset({"hello"})
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
        self._pending: tuple[int, dict[str, np.ndarray] | None, WeightRef | None] | None = None
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
        # One handler per kind (CONTROL_KINDS), each taking (identity, authenticated role, message).
        self._handlers: dict[str, Callable[[bytes, str | None, Message], None]] = {
            "hello": self._hello,
            "get_weights": self._get_weights,
            "actor_stats": self._actor_stats,
            "eval_result": self._eval_result,
        }
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
        self._broadcast = WeightBroadcast(
            self.pub, self._encode, self.run_id, shared_memory=config.net.shared_memory_weights
        )
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
        ref = self._broadcast.write_shared(version, arrays)
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
        self._broadcast.set_shared_memory(enabled)

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
                    self._broadcast.stop(self._stop_reason)
                if time.monotonic() >= next_expiry:
                    self._expire_actors()
                    next_expiry = time.monotonic() + EXPIRY_CHECK_S
                events = dict(poller.poll(100))
                self.connections.quiet = self._stop_reason is not None  # at the stop, actors are meant to leave
                self.connections.poll()
                while self._wake_rx.poll(0):
                    self._wake_rx.recv()
                if self.router in events:
                    self._receive()
            if self._stop_reason is not None:
                self._broadcast.stop(self._stop_reason)
        finally:
            self.connections.close()
            self._wake_rx.close(linger=0)
            self.router.close(linger=0)  # see replay/endpoints.py: replies at exit are dropped, not flushed
            self._broadcast.close()
            if self.security is not None:
                self.security.close()

    def _receive(self) -> None:
        """The messages waiting, up to a round's worth, so that publishing and expiry keep their turn."""
        for _ in range(128):
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frames)

    def _publish(self) -> None:
        with self._lock:
            self._publish_pending = False
            version, arrays, ref = self._pending  # type: ignore[misc]
        published = self._broadcast.publish(version, arrays, ref)
        if published is not None:
            with self._lock:
                self._weights = published

    # ---- one message: dispatch, reply, reject -----------------------------------------------------
    def _handle(self, frames: list) -> None:
        """One message, to its kind's handler; whatever goes wrong with it is counted and logged, and the
        thread goes on."""
        if len(frames) < 2:
            self._count("bad_envelope")
            return
        identity = frames[0].bytes
        msg: Message | None = None
        try:
            msg = self._decode(identity, frames[1:])
            if msg is not None:
                self._handlers[msg.kind](identity, self.roles.authenticated(frames[1]), msg)
        except Refused as err:
            told = msg is not None and msg.kind in TOLD_REFUSALS
            self._reject(identity, err.reason, "refused", err, tell=told)
        except Exception as err:  # a bug hit by one message must not end the control plane
            self._count("handler_error")
            self._warnings.warning(identity, "error handling a control message: %s", printable(err, 200), exc_info=True)

    def _decode(self, identity: bytes, frames: list) -> Message | None:
        """The message, or None when it was rejected (and counted, and its sender told if that helps)."""
        try:
            msg = decode(frames, expect=CONTROL_KINDS)
            require_vectors(msg, *VECTORS.get(msg.kind, ()))
        except DecodeError as err:
            self._reject(identity, err.reason, "rejected", err, tell=err.reason in TOLD_DECODE_ERRORS)
            return None
        return msg

    def _reject(self, identity: bytes, reason: str, verb: str, err: Exception, *, tell: bool) -> None:
        """The one place a message is turned down: counted by reason, logged at a rate each peer cannot
        raise, and answered with an `error` when the sender would otherwise wait for nothing."""
        self._count(reason)
        self._warnings.warning(identity, "%s a control message: %s", verb, printable(err, 200))
        if tell:
            self._reply_error(identity, reason, str(err)[:200])

    def _reply_error(self, identity: bytes, reason: str, detail: str | None = None) -> None:
        meta = {"reason": reason} if detail is None else {"reason": reason, "detail": detail}
        self._reply(identity, self._encode("error", meta))

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

    # ---- the handlers ---------------------------------------------------------------------------
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
            if epsilon is not None:
                joined += f", epsilon {epsilon:.4g}" + ("" if self.registry.sends_epsilon else " (its env slots' mean)")
            log.info(joined)
        if not self.registry.sends_epsilon:  # its env slots differ: the actor computes them (docs/protocol.md)
            epsilon = None
        config = self.config.to_dict()
        # Key file locations are this machine's business; actors bring their own keys.
        config["net"].update(curve_secret_key="", curve_server_key="", curve_authorized_dir="")
        welcome = {"config": config, "actor_index": index, "run_id": self.run_id}
        if epsilon is not None:
            welcome["epsilon"] = epsilon
        self._reply(identity, self._encode("welcome", welcome))

    def _get_weights(self, identity: bytes, authenticated: str | None, msg: Message) -> None:
        with self._lock:
            weights = self._weights
        if weights is None:
            self._reply_error(identity, "no_weights_yet")
            return
        held = msg.meta.get("newer_than")
        if held is not None and msg.meta.get("run_id") == self.run_id and weights[0] <= held:
            self._reply_error(identity, "up_to_date")  # a relay checking that it is current: 38 bytes, not 6.75 MB
            return
        encode = partial(self._encode, "weights", {"version": weights[0], "run_id": self.run_id}, weights[1])
        refusal = self._weight_replies.send(self.router, identity, weights[0], encode, time.monotonic())
        if refusal == "reply_dropped":
            self.replies_dropped += 1
        elif refusal is not None:
            self._count(refusal)

    def _actor_stats(self, identity: bytes, authenticated: str | None, msg: Message) -> None:
        if self.roles.role_of(identity, authenticated) not in (None, "actor"):  # None: taken on, as after a restart
            raise Refused("not_actor", "actor_stats from an evaluator")
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
                self._reply_error(identity, "hello_first")
            sender = f"an {role}" if role else "a peer that never said hello"
            raise Refused("not_evaluator", f"eval_result from {sender}")
        returns = msg.arrays["returns"]
        if len(returns) > MAX_EPISODES_PER_REPORT:
            raise Refused("too_many_episodes", f"{len(returns)} evaluation episodes")
        with self._lock:
            self.eval_results.append((msg.meta["weight_version"], np.array(returns)))

    # ---- the actors -----------------------------------------------------------------------------
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
