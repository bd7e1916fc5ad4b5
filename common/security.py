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
import os
import re
import stat
import threading
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import zmq
from zmq.auth import load_certificate, load_certificates
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

from common.errors import StartupError

if TYPE_CHECKING:
    from common.config import NetConfig

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
SETTINGS_HINT = (
    "generate keys with distdqn-keygen and set net.curve_secret_key, net.curve_server_key and "
    "net.curve_authorized_dir (see docs/security.md)"
)
_LOG_FIRST = 20
_LOG_EVERY = 1000
_MONITOR_POLL_MS = 100
_HANDSHAKE_FAILURES = zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
_LIKELY_CAUSE = {
    "ZMTP_MECHANISM_MISMATCH": "a plaintext client (no CURVE keys)",
    "ZMTP_CRYPTOGRAPHIC": "a CURVE client using the wrong server public key",
}
_PROTOCOL_ERRORS = {getattr(zmq, n): n[len("PROTOCOL_ERROR_") :] for n in dir(zmq) if n.startswith("PROTOCOL_ERROR_")}

log = logging.getLogger(__name__)


# ---- key files ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class KeyPair:
    public: bytes
    """z85 text, 40 bytes"""
    secret: bytes
    """z85 text, 40 bytes"""


def _write_new(path: Path, text: str, mode: int, *, force: bool) -> None:
    """Create with the final mode in the same call (O_EXCL), so a secret is never briefly readable."""
    if force:
        path.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise StartupError(f"{path} exists; pass --force to replace it") from None
    except OSError as err:
        raise StartupError(f"cannot create {path}: {err.strerror}") from None
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)


def _certificate(name: str, public: bytes, secret: bytes | None) -> str:
    """pyzmq's certificate text: comments, a metadata section and a curve section."""
    kind = "SECRET key: keep it private (mode 0600), never copy it to another machine" if secret else "public key"
    lines = [f"#   distdqn CURVE {kind}", "", "metadata", f"    name = {name}", "curve"]
    lines.append(f'    public-key = "{public.decode("ascii")}"')
    if secret is not None:
        lines.append(f'    secret-key = "{secret.decode("ascii")}"')
    return "\n".join(lines) + "\n"


def generate_keypair(directory: Path, name: str, *, force: bool = False) -> tuple[Path, Path]:
    """DIR/NAME.key (public, 0644) and DIR/NAME.key_secret (0600); returns (public, secret) paths."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", name):
        raise StartupError(f"key name must be letters, digits, '.', '_' or '-', got {name!r}")
    public_path, secret_path = directory / f"{name}{PUBLIC_SUFFIX}", directory / f"{name}{SECRET_SUFFIX}"
    existing = [str(p) for p in (public_path, secret_path) if p.exists() or p.is_symlink()]
    if existing and not force:
        raise StartupError(f"{existing[0]} exists; pass --force to replace it")
    directory.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    _write_new(secret_path, _certificate(name, public, secret), SECRET_MODE, force=force)
    _write_new(public_path, _certificate(name, public, None), PUBLIC_MODE, force=force)
    return public_path, secret_path


def _valid_key(key: bytes | None) -> bool:
    if key is None or len(key) != 40:
        return False
    try:
        return len(z85.decode(key)) == 32
    except (ValueError, KeyError):
        return False


def check_secret_key_file(path: Path) -> None:
    """Refuse a secret key that others could read or replace: with it they could pose as this process."""
    try:
        st = path.stat()
    except OSError as err:
        raise StartupError(f"secret key {path}: {err.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise StartupError(f"secret key {path}: not a regular file")
    if st.st_mode & 0o077:
        raise StartupError(
            f"secret key {path} is accessible by group or others (mode {stat.S_IMODE(st.st_mode):04o}): "
            f"run chmod 600 {path}"
        )


def load_public_key(path: str | Path) -> bytes:
    """The z85 public key from a NAME.key (or NAME.key_secret) file."""
    try:
        public, _secret = load_certificate(path)
    except (OSError, ValueError) as err:
        raise StartupError(f"public key {path}: {err}") from None
    if not _valid_key(public):
        raise StartupError(f"public key {path}: not a CURVE key file")
    return public


def load_keypair(path: str | Path) -> KeyPair:
    """This process's own key pair from its NAME.key_secret file, after the permission check."""
    path = Path(path)
    check_secret_key_file(path)
    try:
        public, secret = load_certificate(path)
    except (OSError, ValueError) as err:
        raise StartupError(f"secret key {path}: {err}") from None
    if not _valid_key(secret) or not _valid_key(public):
        raise StartupError(f"secret key {path}: no valid secret-key line (is this the .key_secret file?)")
    if zmq.curve_public(secret) != public:
        raise StartupError(f"secret key {path}: its public-key line does not match the secret key")
    return KeyPair(public, secret)


def load_authorized_keys(directory: str | Path) -> frozenset[bytes]:
    """Every public key in DIR/*.key; the directory must not be writable by others (they could add keys)."""
    directory = Path(directory)
    try:
        st = directory.stat()
    except OSError as err:
        raise StartupError(f"authorized key directory {directory}: {err.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StartupError(f"authorized key directory {directory}: not a directory")
    if st.st_mode & 0o022:
        raise StartupError(f"authorized key directory {directory} is writable by group or others: chmod go-w it")
    try:
        keys = load_certificates(directory)
    except (OSError, ValueError) as err:
        raise StartupError(f"authorized key directory {directory}: {err}") from None
    bad = [k for k in keys if not _valid_key(k)]
    if bad:
        raise StartupError(f"authorized key directory {directory}: holds a malformed key {bad[0]!r}")
    return frozenset(keys)


# ---- the non-loopback rule ---------------------------------------------------------------------
def require_secure_bind(host: str, curve_configured: bool) -> None:
    """Loopback is private to this machine; anything else must be CURVE-protected."""
    from common.sockets import is_loopback  # late: common.sockets imports this module

    if not curve_configured and not is_loopback(host):
        raise StartupError(
            f"refusing to listen on {host}: a non-loopback address needs CurveZMQ; {SETTINGS_HINT}, "
            "or listen on 127.0.0.1"
        )


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
    """Keys allowed by ZAP, re-read when the directory changes so actors can be added without a restart."""

    def __init__(self, directory: Path, server_public: bytes) -> None:
        self.directory = directory
        self.server_public = server_public  # the learner, holding the server pair, is a replay client
        self.keys = load_authorized_keys(directory)
        self._mtime = directory.stat().st_mtime_ns

    def allows(self, key: bytes) -> bool:
        try:
            mtime = self.directory.stat().st_mtime_ns
            if mtime != self._mtime:
                self.keys = load_authorized_keys(self.directory)
                self._mtime = mtime
                log.info("reloaded %d authorized keys from %s", len(self.keys), self.directory)
        except (OSError, StartupError) as err:
            log.warning("keeping the previous authorized keys: %s", err)
        return key == self.server_public or key in self.keys


class _Authenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread with our allowlist as its CURVE policy, so every ZAP refusal is counted."""

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
        if self._allowlist.allows(key):
            return True
        where = self._allowlist.directory
        self._refusals.add("unknown_key", f"{self._peer} has CURVE key {key.decode('ascii')}, not in {where}")
        return False


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
        """None when the run has no CURVE settings (then only loopback binds are allowed)."""
        if not net.curve_secret_key:
            return None
        return cls(ctx, load_keypair(net.curve_secret_key), net.curve_authorized_dir)

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

    @classmethod
    def from_paths(cls, secret_key: str | Path, server_key: str | Path) -> ClientSecurity:
        return cls(load_keypair(secret_key), load_public_key(server_key))

    @classmethod
    def from_config(cls, net: NetConfig) -> ClientSecurity | None:
        if not net.curve_secret_key:
            return None
        return cls.from_paths(net.curve_secret_key, net.curve_server_key)


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
