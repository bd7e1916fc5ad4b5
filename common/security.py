"""CurveZMQ for distdqn: key files, the allowlist, and the checks that keep servers off open networks.

Why: a server that listens beyond loopback is reachable by anyone on that network, and our wire format
trusts its peers with memory and CPU (large transitions, weight requests). So a non-loopback bind needs
CURVE: every connection is encrypted and the client must prove it holds a secret key whose public half
sits in the server's allowlist directory. ZAP (the ZeroMQ authentication protocol) makes that check,
so knowing the server's public key alone gets a client nothing.

Key files use pyzmq's certificate format (`zmq.auth.load_certificate` reads them): NAME.key holds the
public key, NAME.key_secret both keys. One server key pair serves the whole cluster (learner and replay
share it); every client (actor, evaluator) has its own pair. See docs/security.md.

Refusals are counted in two places, because libzmq refuses in two places: ZAP sees a valid CURVE client
whose key is not allowed, while a plaintext client or one with the wrong server key fails the handshake
before ZAP is asked, which only a socket monitor reports.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from common import run_keys
from common.errors import StartupError
from common.key_files import (  # noqa: F401  (re-exported: callers know these as common.security's)
    PUBLIC_MODE,
    PUBLIC_SUFFIX,
    ROLE_DIRS,
    SECRET_MODE,
    SECRET_SUFFIX,
    KeyPair,
    check_secret_key_file,
    generate_keypair,
    load_authorized_keys,
    load_keypair,
    load_public_key,
    load_role_keys,
)

if TYPE_CHECKING:
    from common.config import NetConfig

_LOG_FIRST = 20
_LOG_EVERY = 1000
_MONITOR_POLL_MS = 100
_HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
_LIKELY_CAUSE = {
    "ZMTP_MECHANISM_MISMATCH": "a plaintext client (no CURVE keys)",
    "ZMTP_CRYPTOGRAPHIC": "a CURVE client using the wrong server public key",
}
_PROTOCOL_ERRORS = {getattr(zmq, n): n[len("PROTOCOL_ERROR_") :] for n in dir(zmq) if n.startswith("PROTOCOL_ERROR_")}

# What a key of each authenticated role may do: the learner (the server pair) is the cluster itself;
# a key from a flat allowlist ("client") is taken as actor or evaluator, as before roles existed.
ROLE_MAY = {
    "learner": frozenset({"learner", "actor", "evaluator"}),
    "client": frozenset({"actor", "evaluator"}),
    "actor": frozenset({"actor"}),
    "evaluator": frozenset({"evaluator"}),
    "unknown": frozenset(),
}

log = logging.getLogger(__name__)


# ---- refusals ----------------------------------------------------------------------------------
class Refusals:
    """Thread-safe refusal counter: the ZAP and monitor threads add, the server loops read."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, reason: str, detail: str) -> None:
        with self._lock:
            self._counts[reason] += 1
            total = sum(self._counts.values())
        if total <= _LOG_FIRST or total % _LOG_EVERY == 0:
            log.warning("refused a client (%s): %s [%d refused so far]", reason, detail, total)

    @property
    def total(self) -> int:
        with self._lock:
            return sum(self._counts.values())

    def by_reason(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)


class _Allowlist:
    """Keys allowed by ZAP and the role of each, re-read when the directory changes (actors can be added
    without a restart). The server's own public key is the learner: it holds the server pair."""

    def __init__(self, directory: Path, server_public: bytes) -> None:
        self.directory = directory
        self.server_public = server_public
        self.keys = load_role_keys(directory, announce=True)
        self._mtimes = self._stamp()

    def _stamp(self) -> tuple[int, ...]:
        dirs = [self.directory, *(self.directory / sub for sub in ROLE_DIRS)]
        return tuple(d.stat().st_mtime_ns if d.is_dir() else 0 for d in dirs)

    def user_id(self, key: bytes) -> str | None:
        """ "ROLE:NAME" for an allowed z85 key, None for any other."""
        try:
            mtimes = self._stamp()
            if mtimes != self._mtimes:
                self.keys = load_role_keys(self.directory)
                self._mtimes = mtimes
                log.info("reloaded %d authorized keys from %s", len(self.keys), self.directory)
        except (OSError, StartupError) as err:
            log.warning("keeping the previous authorized keys: %s", err)
        if key == self.server_public:
            return "learner:server"
        return self.keys.get(key)


class _Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread with our allowlist as its CURVE policy: every ZAP refusal is counted, and each
    accepted connection's User-Id is "ROLE:NAME" (read back per message by `peer_role`)."""

    def __init__(self, ctx: zmq.Context, allowlist: _Allowlist, refusals: Refusals) -> None:
        super().__init__(ctx, log=logging.getLogger(f"{__name__}.zap"))
        self._allowlist = allowlist
        self._refusals = refusals
        self._peer = "?"
        self.configure_curve_callback(domain="*", credentials_provider=self)

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # The key callback is not told the peer's address; note it here (one ZAP thread, one request at a time).
        self._peer = msg[3].decode("utf-8", "replace") if len(msg) > 3 else "?"
        await super().handle_zap_message(msg)

    def callback(self, domain: str, key: bytes) -> bool:
        if self._allowlist.user_id(key) is not None:
            return True
        where = self._allowlist.directory
        self._refusals.add("unknown_key", f"{self._peer} has CURVE key {key.decode('ascii')}, not in {where}")
        return False

    def curve_user_id(self, client_public_key: bytes) -> str:
        return self._allowlist.user_id(z85.encode(client_public_key)) or "unknown:?"


def peer_role(frame: zmq.Frame) -> str | None:
    """The ROLE of the key that sent `frame` (received with copy=False), None on an unauthenticated socket."""
    try:
        user_id = frame.get("User-Id")
    except (zmq.ZMQError, AttributeError):
        return None
    if not user_id:
        return None
    role = user_id.partition(":")[0]
    return role if role in ROLE_MAY else "unknown"


def may_act_as(authenticated: str | None, role: str) -> bool:
    """Whether a peer authenticated as `authenticated` may take `role` (None: no authentication, anything)."""
    return authenticated is None or role in ROLE_MAY.get(authenticated, ())


class _HandshakeMonitor(threading.Thread):
    """Reads server sockets' monitor events: plaintext clients and wrong server keys never reach ZAP."""

    def __init__(self, ctx: zmq.Context, refusals: Refusals) -> None:
        super().__init__(name="curve-monitor", daemon=True)
        self.ctx = ctx
        self.refusals = refusals
        self._lock = threading.Lock()
        self._new: list[tuple[zmq.Socket, str]] = []
        self._closing = threading.Event()

    def watch(self, sock: zmq.Socket, what: str) -> None:
        """Called from the socket's own thread; the monitor end is handed over under the lock."""
        endpoint = f"inproc://distdqn-monitor-{uuid.uuid4().hex}"
        sock.monitor(endpoint, _HANDSHAKE_FAILURES)
        pair = self.ctx.socket(zmq.PAIR)
        pair.setsockopt(zmq.LINGER, 0)
        pair.connect(endpoint)
        with self._lock:
            self._new.append((pair, what))

    def close(self) -> None:
        self._closing.set()
        if self.is_alive():
            self.join(timeout=5)
        with self._lock:  # never started, or not yet picked up
            for pair, _ in self._new:
                pair.close()
            self._new.clear()

    def run(self) -> None:
        poller = zmq.Poller()
        watched: dict[zmq.Socket, str] = {}
        try:
            while not self._closing.is_set():
                with self._lock:
                    new, self._new = self._new, []
                for pair, what in new:
                    poller.register(pair, zmq.POLLIN)
                    watched[pair] = what
                for pair, _ in poller.poll(_MONITOR_POLL_MS):
                    event = recv_monitor_message(pair)
                    if event["event"] & _HANDSHAKE_FAILURES:
                        cause = _PROTOCOL_ERRORS.get(event["value"], f"error {event['value']}")
                        endpoint = event["endpoint"].decode("utf-8", "replace")
                        likely = _LIKELY_CAUSE.get(cause, "plaintext, or the wrong server key")
                        detail = f"a client failed the CURVE handshake on {watched[pair]} {endpoint} ({cause})"
                        self.refusals.add("handshake_failed", f"{detail}: {likely}")
        finally:
            for pair in watched:
                pair.close()


# ---- servers and clients -----------------------------------------------------------------------
class ServerSecurity:
    """One per server process and context: its key pair, the ZAP thread, the monitor and the counter.

    ZAP handlers are per context (inproc://zeromq.zap.01), so a context holds at most one of these.
    It must exist before the first secured socket binds: without a ZAP handler libzmq lets any CURVE
    client in. Close it after the secured sockets and before the context.
    """

    def __init__(self, ctx: zmq.Context, keys: KeyPair, authorized_dir: str | Path) -> None:
        self.keys = keys
        self.refusals = Refusals()
        allowlist = _Allowlist(Path(authorized_dir), keys.public)
        if not allowlist.keys:
            log.warning("no client keys in %s: only the cluster's own servers can connect", authorized_dir)
        self._auth = _Authenticator(ctx, allowlist, self.refusals)
        try:
            self._auth.start()
        except zmq.ZMQError as err:
            raise StartupError(f"cannot start the ZAP authenticator: {err} (one per context)") from None
        self._monitor = _HandshakeMonitor(ctx, self.refusals)
        self._monitor.start()

    @classmethod
    def from_config(cls, net: NetConfig, ctx: zmq.Context) -> ServerSecurity | None:
        """The user's net.curve_* keys, else the run keys (DISTDQN_RUN_KEYS), else None: then only
        loopback binds are allowed, and any local user can connect (said once per process)."""
        if net.curve_secret_key:
            return cls(ctx, load_keypair(net.curve_secret_key), net.curve_authorized_dir)
        directory = run_keys.run_keys_dir()
        if directory is None:
            _warn_unprotected()
            return None
        secret, authorized = run_keys.server_files(directory)
        return cls(ctx, load_keypair(secret), authorized)

    @property
    def denied(self) -> int:
        return self.refusals.total

    def secure(self, sock: zmq.Socket, what: str) -> None:
        """Make `sock` a CURVE server whose clients ZAP checks; call before bind."""
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        self._monitor.watch(sock, what)

    def close(self) -> None:
        self._monitor.close()
        self._auth.stop()


@dataclass(frozen=True)
class ClientSecurity:
    keys: KeyPair
    """this client's own pair"""
    server_key: bytes
    """the cluster's server public key (z85)"""
    run_keys: bool = False
    """made from the launcher's per-run keys (so replay on this host also listens on the ipc ingest)"""

    @classmethod
    def from_paths(cls, secret_key: str | Path, server_key: str | Path) -> ClientSecurity:
        return cls(load_keypair(secret_key), load_public_key(server_key))

    @classmethod
    def from_config(cls, net: NetConfig, role: str = "learner") -> ClientSecurity | None:
        if net.curve_secret_key:
            return cls.from_paths(net.curve_secret_key, net.curve_server_key)
        return cls.from_run_keys(role)

    @classmethod
    def from_run_keys(cls, role: str) -> ClientSecurity | None:
        """This role's pair from the run keys (DISTDQN_RUN_KEYS), None when the variable is unset."""
        directory = run_keys.run_keys_dir()
        if directory is None:
            return None
        secret, server = run_keys.client_files(directory, role)
        return cls(load_keypair(secret), load_public_key(server), run_keys=True)


_warned_unprotected = False


def _warn_unprotected() -> None:
    global _warned_unprotected
    if not _warned_unprotected:
        _warned_unprotected = True
        log.warning(
            "serving on loopback without authentication: any local user can connect (start through "
            "scripts/launch_cluster.sh, or set DISTDQN_RUN_KEYS or net.curve_*; docs/security.md)"
        )


def secure_server(sock: zmq.Socket, security: ServerSecurity | None, what: str) -> None:
    """Before bind: CURVE with ZAP when the process has server security, plain otherwise."""
    if security is not None:
        security.secure(sock, what)


def secure_client(sock: zmq.Socket, security: ClientSecurity | None) -> None:
    """Before connect: a CURVE client that proves its key and checks the server's."""
    if security is not None:
        sock.setsockopt(zmq.CURVE_SECRETKEY, security.keys.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, security.keys.public)
        sock.setsockopt(zmq.CURVE_SERVERKEY, security.server_key)
