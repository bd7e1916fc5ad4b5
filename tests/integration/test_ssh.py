"""Actor blocks on another host, started over a real OpenSSH session by `launch_cluster.sh --actor-hosts`.

The "other host" is a network namespace joined to the servers' namespace by a veth pair (see
tests/integration/netns.py), with its own sshd (key authentication only; see tests/integration/sshd.py).
Both namespaces share this checkout's files, so the remote checkout and its .venv are this one. CurveZMQ
is on, since the servers listen off loopback; the remote actors name their secret key by path.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration import sshd
from tests.integration.netns import REPO_ROOT, Link, keygen, veth_link

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

PORT_BASE = 47510  # namespace-local
LAUNCHER = REPO_ROOT / "scripts" / "launch_cluster.sh"


@pytest.fixture
def link() -> Iterator[Link]:
    sshd.require()
    with veth_link() as made:
        yield made


def curve_overrides(tmp_path: Path, *hosts: str) -> list[str]:
    """Server keys, one key pair per actor host (public half authorized), as docs/scaling.md says."""
    keys, authorized = tmp_path / "keys", tmp_path / "authorized"
    authorized.mkdir(mode=0o755, exist_ok=True)
    for name in ("server", *hosts):
        keygen(keys, name)
        if name != "server":
            shutil.copy(keys / f"{name}.key", authorized / f"{name}.key")
    return [
        f"net.curve_secret_key={keys / 'server.key_secret'}",
        f"net.curve_server_key={keys / 'server.key'}",
        f"net.curve_authorized_dir={authorized}",
    ]


def _remote_actor_pids(cluster: Cluster, sshd_name: str, index: int) -> list[int]:
    return [
        pid
        for pid in cluster.descendants(cluster.procs[sshd_name].pid)
        if re.search(rf"-m actor --actor-index {index}\b", cluster.command_line(pid))
    ]


def test_ssh_blocks_start_log_here_restart_and_stop_with_the_launcher(
    link: Link, cluster: Cluster, tmp_path: Path
) -> None:
    setup = sshd.client_setup(tmp_path / "ssh")
    cluster.start("sshd", link.command(link.client_ns, sshd.server_argv(setup, tmp_path / "sshd", link.client_ip)))
    hosts = tmp_path / "hosts"
    hosts.write_text(f"# the actor host\nroot@{link.client_ip} 2\n")
    keys = tmp_path / "keys"
    cluster.env.update(
        DISTDQN_SSH=setup.command,
        DISTDQN_REMOTE_SECRET_KEY=str(keys / "host-b.key_secret"),
        DISTDQN_REMOTE_SERVER_KEY=str(keys / "server.key"),
        DISTDQN_MAX_RESTARTS="3",
        DISTDQN_REMOTE_RUNS=str(tmp_path / "remote"),
    )
    args = ["--run-dir", str(cluster.run_dir), "--port-base", str(PORT_BASE), "--num-actors", "1", "--no-eval"]
    args += ["--actor-hosts", str(hosts), "net.bind_host=0.0.0.0", f"net.public_host={link.server_ip}"]
    args += [*curve_overrides(tmp_path, "host-b"), "stop.eval_return=1000000", "stop.max_wall_s=170"]
    launcher = cluster.start("launcher", link.command(link.server_ns, [str(LAUNCHER), *args, "log_interval_s=1"]))
    learner_log = cluster.run_dir / "logs" / "learner.log"
    ssh_log = cluster.run_dir / "logs" / f"ssh-root_{link.client_ip}.log"

    def remote_joined() -> bool:
        text = learner_log.read_text() if learner_log.exists() else ""
        return "actor 1 joined" in text and "actor 2 joined" in text

    assert cluster.wait_until(remote_joined, timeout_s=90), f"the remote actors never joined\n{cluster.diagnostics()}"
    out = cluster.stdout("launcher")
    assert f"ssh: 2 actor(s) on the hosts in {hosts} (indices 1..2), learner at {link.server_ip}:{PORT_BASE}" in out
    # The remote actors' own logs arrive here, through the session.
    assert cluster.wait_until(lambda: ssh_log.exists() and "actor-2" in ssh_log.read_text(), timeout_s=30), (
        cluster.diagnostics()
    )

    # The session dies: its remote block stops (watchdog) and a new session brings the actors back.
    old = _remote_actor_pids(cluster, "sshd", 2)
    assert old, f"no remote actor 2 under sshd\n{cluster.diagnostics()}"
    cluster.remember_descendants()
    ssh_clients = [p for p in cluster.descendants(launcher.pid) if cluster.command_line(p).startswith("ssh -F")]
    assert len(ssh_clients) == 1, ssh_clients
    os.kill(ssh_clients[0], signal.SIGKILL)
    gone = cluster.wait_until(lambda: not any(cluster.is_alive(pid) for pid in old), timeout_s=30)
    assert gone, f"the remote block outlived its ssh session: {old}\n{cluster.diagnostics()}"
    restarted = cluster.wait_until(lambda: _remote_actor_pids(cluster, "sshd", 2), timeout_s=60)
    assert restarted and not set(restarted) & set(old), cluster.diagnostics()
    supervisor_log = (cluster.run_dir / "logs" / "ssh-actors.log").read_text()
    assert f"the ssh session to root@{link.client_ip} died (status" in supervisor_log, supervisor_log
    assert "restarting the block on" in supervisor_log, supervisor_log

    # SIGTERM to the launcher ends everything, the remote side included.
    cluster.remember_descendants()
    remote = cluster.descendants(cluster.procs["sshd"].pid)
    launcher.send_signal(signal.SIGTERM)
    assert cluster.wait_exit("launcher", timeout_s=30) is not None, cluster.diagnostics()
    left = cluster.wait_until(lambda: not [p for p in remote if cluster.is_alive(p)] or None, timeout_s=15)
    assert left, {p: cluster.command_line(p) for p in remote if cluster.is_alive(p)}
    assert not cluster.leftover_processes(f"{link.server_ip}:{PORT_BASE}"), cluster.leftover_processes(
        f"{link.server_ip}:{PORT_BASE}"
    )
    assert "Traceback" not in ssh_log.read_text() + cluster.log("launcher")


@pytest.mark.parametrize(
    ("hosts", "message"),
    [
        ("gpu-a 0\n", "ACTORS must be a positive integer, got '0'"),
        ("gpu-a 2 extra\n", "expected 'HOST [ACTORS]'"),
        ("-oProxyCommand=x 1\n", "expected 'HOST [ACTORS]'"),
        ("# nothing\n", "no hosts"),
    ],
)
def test_a_bad_hosts_file_is_one_error_line_and_starts_nothing(tmp_path: Path, hosts: str, message: str) -> None:
    path = tmp_path / "hosts"
    path.write_text(hosts)
    run_dir = tmp_path / "run"
    argv = [str(LAUNCHER), "--actor-hosts", str(path), "--run-dir", str(run_dir), "net.bind_host=0.0.0.0"]
    result = subprocess.run(argv, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr
    assert not (run_dir / "logs" / "learner.log").exists()
