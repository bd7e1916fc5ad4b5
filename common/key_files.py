"""CURVE key files: create them with safe modes, load them with permission checks.

Why a module of its own: the servers' ZAP and socket setup (common.security) and the run-key layout
(common.run_keys) both read key files, and the checks on who may read or replace them live in one place.
Files use pyzmq's certificate format: NAME.key the public key, NAME.key_secret both keys.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.auth import load_certificate, load_certificates
from zmq.utils import z85

from common.errors import StartupError

PUBLIC_SUFFIX = ".key"
SECRET_SUFFIX = ".key_secret"
SECRET_MODE = 0o600
PUBLIC_MODE = 0o644
ROLE_DIRS = {"actors": "actor", "evaluators": "evaluator", "learners": "learner"}
FLAT_ROLE = "client"  # keys directly in the allowlist directory: actor or evaluator, as before roles

log = logging.getLogger(__name__)


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


def _checked_dir(directory: Path) -> None:
    try:
        st = directory.stat()
    except OSError as err:
        raise StartupError(f"authorized key directory {directory}: {err.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StartupError(f"authorized key directory {directory}: not a directory")
    if st.st_mode & 0o022:
        raise StartupError(f"authorized key directory {directory} is writable by group or others: chmod go-w it")


def _named_keys(directory: Path, role: str) -> dict[bytes, str]:
    _checked_dir(directory)
    found = {}
    for path in sorted(directory.glob(f"*{PUBLIC_SUFFIX}")):
        found[load_public_key(path)] = f"{role}:{path.name[: -len(PUBLIC_SUFFIX)]}"
    return found


def load_role_keys(directory: str | Path, *, announce: bool = False) -> dict[bytes, str]:
    """Every allowed z85 key with its ZAP user id "ROLE:NAME": the role is the subdirectory the key is in
    (actors/, evaluators/, learners/); keys directly in DIR are "client" (actor or evaluator)."""
    directory = Path(directory)
    keys = _named_keys(directory, FLAT_ROLE)
    if keys and announce:
        log.info(
            "%d keys directly in %s are authorized as actor and evaluator; move each into actors/, "
            "evaluators/ or learners/ there to give it one role (docs/security.md)",
            len(keys),
            directory,
        )
    for sub, role in ROLE_DIRS.items():
        if (directory / sub).is_dir():
            keys.update(_named_keys(directory / sub, role))
    return keys
