"""Per-run CURVE keys: one directory, made by the launcher, that every process of the run reads.

Why: loopback is reachable by every user of the machine, so without keys any local user could join a
run, read its weights, feed replay or bind a dead server's port and pose as it. The launcher makes
`RUN_DIR/keys` (mode 0700) with a server pair and one client pair per role, and passes its path in
DISTDQN_RUN_KEYS; each process then uses CURVE with its role's pair, and only the run's own user can
read the secrets. User-configured net.curve_* settings take precedence. Layout (docs/security.md):

    DIR/server.key{,_secret}     the learner's and replay's server pair (its public key is the learner)
    DIR/ROLE.key{,_secret}       ROLE in learner, actor, evaluator: each role's client pair
    DIR/authorized/ROLEs/ROLE.key  the allowlist, one subdirectory per role
    DIR/ingest.sock              replay's ipc ingest endpoint for actors on its host (no CURVE: see below)
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
from pathlib import Path

from common.errors import StartupError
from common.key_files import PUBLIC_SUFFIX, ROLE_DIRS, SECRET_SUFFIX, generate_keypair

ENV = "DISTDQN_RUN_KEYS"
CLIENT_ROLES = ("learner", "actor", "evaluator")
IPC_INGEST = "ingest.sock"
IPC_PATH_MAX = 107  # sun_path holds 108 bytes with the terminating NUL

log = logging.getLogger(__name__)


def check_private_dir(directory: Path) -> None:
    """Refuse a run-keys directory that another user owns or could enter: they could read the secrets,
    or create the ipc socket before replay does."""
    try:
        st = directory.lstat()
    except OSError as err:
        raise StartupError(f"run keys {directory}: {err.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StartupError(f"run keys {directory}: not a directory")
    if st.st_uid != os.geteuid():
        raise StartupError(f"run keys {directory}: owned by uid {st.st_uid}, not by this user")
    if st.st_mode & 0o077:
        raise StartupError(f"run keys {directory}: mode {stat.S_IMODE(st.st_mode):04o}, must be 0700 (chmod 700 it)")


def make_run_keys(directory: str | Path) -> Path:
    """Create DIR (0700) with every pair and the allowlist; an existing private DIR keeps its keys."""
    directory = Path(directory)
    try:
        directory.parent.mkdir(parents=True, exist_ok=True)
        directory.mkdir(mode=0o700)
    except FileExistsError:
        pass
    except OSError as err:
        raise StartupError(f"cannot create run keys {directory}: {err.strerror}") from None
    check_private_dir(directory)
    authorized = directory / "authorized"
    for sub in ROLE_DIRS:
        (authorized / sub).mkdir(mode=0o755, parents=True, exist_ok=True)
    for name in ("server", *CLIENT_ROLES):
        if not (directory / f"{name}{SECRET_SUFFIX}").exists():
            generate_keypair(directory, name, force=True)
    for role in CLIENT_ROLES:
        allowed = authorized / f"{role}s" / f"{role}{PUBLIC_SUFFIX}"
        shutil.copyfile(directory / f"{role}{PUBLIC_SUFFIX}", allowed)
        allowed.chmod(0o644)
    return directory


def run_keys_dir() -> Path | None:
    """The run's key directory from the environment, checked; None when the variable is unset."""
    value = os.environ.get(ENV, "")
    if not value:
        return None
    directory = Path(value)
    check_private_dir(directory)
    return directory


def server_files(directory: Path) -> tuple[Path, Path]:
    """(server secret key, allowlist directory)."""
    return directory / f"server{SECRET_SUFFIX}", directory / "authorized"


def client_files(directory: Path, role: str) -> tuple[Path, Path]:
    """(this role's secret key, the server public key)."""
    if role not in CLIENT_ROLES:
        raise StartupError(f"no run key for role {role!r}")
    return directory / f"{role}{SECRET_SUFFIX}", directory / f"server{PUBLIC_SUFFIX}"


def local_ingest_address(shard: int = 0) -> str | None:
    """replay's (shard `shard`'s) ipc:// ingest endpoint inside the run-keys directory, for actors on its
    host; None without run keys, or (said once) when the path is too long for a Unix socket: then tcp
    with CURVE it is.

    No CURVE on it, and none needed: only the owner can enter a 0700 directory, so nobody else can
    connect to the socket there, nor create one in its place."""
    directory = run_keys_dir()
    if directory is None:
        return None
    name = IPC_INGEST if shard == 0 else IPC_INGEST.replace(".", f"-{shard}.", 1)
    path = str((directory / name).resolve())
    if len(path.encode()) > IPC_PATH_MAX:
        log.info(
            "run keys path too long for an ipc socket (%d > %d bytes): local ingest uses tcp+CURVE",
            len(path),
            IPC_PATH_MAX,
        )
        return None
    return f"ipc://{path}"
