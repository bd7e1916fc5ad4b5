"""Key files: the key tool's file modes, the secret-key permission check, and loading what it wrote."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from common.errors import StartupError
from common.security import (
    ClientSecurity,
    ServerSecurity,
    check_secret_key_file,
    generate_keypair,
    load_authorized_keys,
    load_keypair,
    load_public_key,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _keygen(*args: str, umask: int = 0o022) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "common.keys", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        umask=umask,
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_creates_a_private_secret_and_a_readable_public_key(tmp_path: Path) -> None:
    # umask 0: the secret must still be 0600, because it is created with that mode, not chmod-ed later.
    result = _keygen("actor-1", "--dir", str(tmp_path / "keys"), umask=0)
    assert result.returncode == 0, result.stderr
    public, secret = tmp_path / "keys" / "actor-1.key", tmp_path / "keys" / "actor-1.key_secret"
    assert _mode(secret) == 0o600
    assert _mode(public) == 0o644
    assert str(public) in result.stdout and str(secret) in result.stdout
    pair = load_keypair(secret)
    assert load_public_key(public) == pair.public
    assert b"secret-key" not in public.read_bytes()

    again = _keygen("actor-1", "--dir", str(tmp_path / "keys"))
    assert again.returncode == 2
    assert again.stderr.startswith("error:") and "--force" in again.stderr
    assert load_keypair(secret) == pair, "a refused run must not touch the existing pair"

    forced = _keygen("actor-1", "--dir", str(tmp_path / "keys"), "--force")
    assert forced.returncode == 0, forced.stderr
    assert load_keypair(secret) != pair and _mode(secret) == 0o600


def test_keygen_refuses_a_bad_name(tmp_path: Path) -> None:
    result = _keygen("../evil", "--dir", str(tmp_path))
    assert result.returncode == 2 and result.stderr.startswith("error:")
    assert list(tmp_path.iterdir()) == []


def test_key_loading_round_trip(tmp_path: Path) -> None:
    public_path, secret_path = generate_keypair(tmp_path, "server")
    pair = load_keypair(secret_path)
    assert len(pair.public) == 40 and len(pair.secret) == 40
    assert zmq.curve_public(pair.secret) == pair.public
    assert load_public_key(public_path) == pair.public
    # pyzmq's own reader sees the same keys: the format is its certificate format.
    assert zmq.auth.load_certificate(secret_path) == (pair.public, pair.secret)
    assert zmq.auth.load_certificate(public_path) == (pair.public, None)
    client = ClientSecurity.from_paths(secret_path, public_path)
    assert client.server_key == pair.public and client.keys == pair


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602, 0o660])
def test_a_secret_key_others_can_read_or_write_is_refused(tmp_path: Path, mode: int) -> None:
    _public, secret = generate_keypair(tmp_path, "server")
    os.chmod(secret, mode)
    with pytest.raises(StartupError, match="chmod 600"):
        check_secret_key_file(secret)
    with pytest.raises(StartupError, match="chmod 600"):
        load_keypair(secret)
    with pytest.raises(StartupError, match="chmod 600"):
        ClientSecurity.from_paths(secret, _public)
    os.chmod(secret, 0o600)
    load_keypair(secret)


def test_a_readable_secret_key_stops_a_real_process(tmp_path: Path) -> None:
    public, secret = generate_keypair(tmp_path / "keys", "server")
    os.chmod(secret, 0o644)
    allowed = tmp_path / "authorized"
    allowed.mkdir(mode=0o755)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "replay",
            "--port-base",
            "41230",
            f"net.curve_secret_key={secret}",
            f"net.curve_server_key={public}",
            f"net.curve_authorized_dir={allowed}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: secret key") and "chmod 600" in last, result.stderr
    assert "Traceback" not in result.stderr


def test_wrong_files_are_clear_errors(tmp_path: Path) -> None:
    public, secret = generate_keypair(tmp_path, "a")
    os.chmod(public, 0o600)
    with pytest.raises(StartupError, match="secret-key"):
        load_keypair(public)  # the public file given where the secret belongs
    with pytest.raises(StartupError, match="No such file"):
        load_keypair(tmp_path / "missing.key_secret")
    garbage = tmp_path / "garbage.key"
    garbage.write_text('curve\n    public-key = "not a key"\n')
    with pytest.raises(StartupError, match="not a CURVE key"):
        load_public_key(garbage)
    _other_public, other_secret = generate_keypair(tmp_path, "b")
    mixed = tmp_path / "mixed.key_secret"
    text = other_secret.read_text().replace(
        load_keypair(other_secret).public.decode(), load_public_key(public).decode()
    )
    fd = os.open(mixed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    with pytest.raises(StartupError, match="does not match"):
        load_keypair(mixed)


def test_the_authorized_directory_is_checked(tmp_path: Path) -> None:
    allowed = tmp_path / "authorized"
    allowed.mkdir(mode=0o755)
    public, secret = generate_keypair(tmp_path, "actor")
    (allowed / "actor.key").write_bytes(public.read_bytes())
    (allowed / "notes.txt").write_text("ignored: only *.key files are keys\n")
    assert load_authorized_keys(allowed) == {load_public_key(public)}
    os.chmod(allowed, 0o777)
    with pytest.raises(StartupError, match="writable by group or others"):
        load_authorized_keys(allowed)
    os.chmod(allowed, 0o755)
    ctx = zmq.Context()
    try:
        with pytest.raises(StartupError, match="authorized key directory"):
            ServerSecurity(ctx, load_keypair(secret), tmp_path / "nope")
    finally:
        ctx.term()
