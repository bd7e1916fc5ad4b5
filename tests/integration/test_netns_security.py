"""CurveZMQ off loopback for real: a replay server and its clients in two network namespaces.

Two namespaces joined by a veth pair give a genuine non-loopback link without touching any real
network: the only addresses used are the pair's own (a /30 from 10.213.0.0/16, which exists only
inside the namespaces; see tests/integration/netns.py). Needs root and `ip netns`; skipped with the
reason otherwise. Everything it creates (namespaces, veth pair, processes) is removed, pass or fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.netns import REPO_ROOT, Link, keygen, veth_link

pytestmark = pytest.mark.slow

CLIENT = Path(__file__).resolve().parent / "curve_client.py"
PORT_BASE = 47310  # namespace-local: nothing else listens inside a fresh namespace
INGEST_PORT, SAMPLE_PORT = PORT_BASE + 2, PORT_BASE + 3


@pytest.fixture
def link() -> Iterator[Link]:
    with veth_link() as made:
        yield made


def _replay_argv(host: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "replay", "--port-base", str(PORT_BASE), f"net.bind_host={host}", *overrides]


def _client(link: Link, keys: Path | None, *flags: str, timeout: float) -> dict | None:
    argv = [sys.executable, str(CLIENT), "--host", link.server_ip, "--ingest-port", str(INGEST_PORT)]
    argv += ["--sample-port", str(SAMPLE_PORT), "--timeout", str(timeout), *flags]
    if keys is not None:
        argv += ["--secret-key", str(keys.with_suffix(".key_secret")), "--server-key", str(keys.parent / "server.key")]
    result = link.run(link.client_ns, argv, timeout=timeout + 60)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])["stats"]


def test_replay_off_loopback_needs_curve_and_admits_only_authorized_clients(link: Link, tmp_path: Path) -> None:
    # (1) Without CURVE settings, listening on the namespace's address is refused at startup.
    refused = link.run(link.server_ns, _replay_argv(link.server_ip), timeout=60)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: refusing to listen on"), refused.stderr
    assert "distdqn-keygen" in lines[-1] and "net.curve_authorized_dir" in lines[-1]
    assert "Traceback" not in refused.stderr

    # (2) With CURVE it serves, but only to clients whose key is in the authorized directory.
    keys, authorized = tmp_path / "keys", tmp_path / "authorized"
    for name in ("server", "actor", "intruder"):
        keygen(keys, name)
    authorized.mkdir(mode=0o755)
    shutil.copy(keys / "actor.key", authorized / "actor.key")
    curve = [
        f"net.curve_secret_key={keys / 'server.key_secret'}",
        f"net.curve_server_key={keys / 'server.key'}",
        f"net.curve_authorized_dir={authorized}",
    ]
    log_path = tmp_path / "replay.log"
    with log_path.open("wb") as log:
        replay = subprocess.Popen(
            ["ip", "netns", "exec", link.server_ns, *_replay_argv(link.server_ip, *curve, "replay.min_size=128")],
            cwd=REPO_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        stats = _client(link, keys / "actor.key", "--push-actor", "1", "--want-inserted", "8", timeout=30)
        assert stats is not None, f"the authorized actor got no stats\n{log_path.read_text()}"
        assert stats["inserted"] == 8, stats

        for who, key in (("intruder", keys / "intruder.key"), ("plaintext", None)):
            stats = _client(link, key, "--push-actor", "2", timeout=2)
            assert stats is None, f"a {who} client was answered: {stats}"

        stats = _client(link, keys / "actor.key", timeout=10)
        assert stats is not None, log_path.read_text()
        assert stats["inserted"] == 8, f"a refused client got transitions stored: {stats}"
        # intruder: its PUSH and DEALER refused by ZAP; plaintext: both fail the handshake (maybe repeatedly)
        assert stats["rejected"].get("unauthenticated", 0) >= 4, stats
        assert replay.poll() is None, log_path.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(replay.pid, signal.SIGTERM)
        try:
            replay.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(replay.pid, signal.SIGKILL)
            replay.wait(timeout=5)
    text = log_path.read_text()
    assert f"refused a client (unknown_key): {link.client_ip}" in text, text
    assert "refused a client (handshake_failed)" in text, text
    assert "'unauthenticated'" in text, "the closing summary should count the refusals"
