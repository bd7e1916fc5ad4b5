"""distdqn across separate hosts: network namespaces on a bridge, actors started over real ssh sessions.

1. Learner and replay on one host, actor blocks on two others started by `launch_cluster.sh
   --actor-hosts` through each host's own sshd; CurveZMQ on. One actor host is cut off the LAN for
   20 s and plugged back in: its actor rejoins by itself, and the learner's log says when it went silent
   and when it came back. The run learns CartPole-v1 and, when the learner ends, every remote block ends.
2. Replay and learner on different hosts: the replay server has a /dev/shm of its own, as another
   machine would, so batches must come over the socket.
"""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration import bridge, sshd
from tests.integration.netns import REPO_ROOT
from tests.integration.test_ssh import curve_overrides

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

LAUNCHER = REPO_ROOT / "scripts" / "launch_cluster.sh"
PORT_BASE = 47610  # namespace-local
CUT_S = 20.0
LEARNED_RETURN = 400.0
_STAMP = re.compile(r"^\[[^\]]+\] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _logged_after(path: Path, needle: str, since: float) -> float | None:
    """Wall time of the first line of the log at `path` stamped at or after `since` that contains `needle`."""
    text = path.read_text(errors="replace") if path.exists() else ""
    for line in text.splitlines():
        match = _STAMP.match(line)
        if match and needle in line:
            stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if stamp >= since - 0.005:
                return stamp
    return None


def _rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip().endswith("}")]


def _evals(run_dir: Path) -> list[float]:
    return [r["eval_return_mean"] for r in _rows(run_dir) if "eval_return_mean" in r]


def _env_steps(run_dir: Path) -> int:
    return max((r.get("env_steps", 0) for r in _rows(run_dir) if "eval_return_mean" not in r), default=0)


def test_actor_hosts_over_ssh_learn_and_a_cut_off_host_rejoins(cluster: Cluster, tmp_path: Path) -> None:
    sshd.require()
    with bridge.lan(3) as lan:
        servers, host_a, host_b = lan.hosts
        setup = sshd.client_setup(tmp_path / "ssh")
        for name, host in (("sshd-a", host_a), ("sshd-b", host_b)):
            cluster.start(name, host.command(sshd.server_argv(setup, tmp_path / name, host.address)))
        hosts = tmp_path / "hosts"
        hosts.write_text(f"root@{host_a.address} 1\nroot@{host_b.address} 1\n")
        keys = tmp_path / "keys"
        cluster.env.update(
            DISTDQN_SSH=setup.command,
            DISTDQN_REMOTE_SECRET_KEY=str(keys / "actor-host.key_secret"),
            DISTDQN_REMOTE_SERVER_KEY=str(keys / "server.key"),
            DISTDQN_REMOTE_RUNS=str(tmp_path / "remote"),
        )
        args = ["--run-dir", str(cluster.run_dir), "--port-base", str(PORT_BASE), "--num-actors", "1"]
        args += ["--actor-hosts", str(hosts), "net.bind_host=0.0.0.0", f"net.public_host={servers.address}"]
        args += [*curve_overrides(tmp_path, "actor-host"), "stop.eval_return=1000000", "stop.max_wall_s=75"]
        args += ["log_interval_s=1"]
        launcher = cluster.start("launcher", servers.command([str(LAUNCHER), *args]))
        learner_log = cluster.run_dir / "logs" / "learner.log"
        joined = cluster.wait_until(
            lambda: (
                all(_logged_after(learner_log, f"actor {i} joined", 0) for i in (1, 2))
                and _env_steps(cluster.run_dir) > 0
            ),
            timeout_s=90,
        )
        assert joined, f"the remote actors did not join and train\n{cluster.diagnostics()}"

        # Host A off the LAN for 20 s, then back.
        cut = time.time()
        lan.set_up(host_a, False)
        silent = cluster.wait_until(lambda: _logged_after(learner_log, "actor 1 silent for", cut), timeout_s=CUT_S)
        assert silent, f"the learner did not notice host A leave\n{cluster.diagnostics()}"
        time.sleep(max(0.0, cut + CUT_S - time.time()))
        heal = time.time()
        lan.set_up(host_a, True)
        back = cluster.wait_until(lambda: _logged_after(learner_log, "actor 1 is reporting again", heal), 30)
        assert back, f"host A's actor did not come back\n{cluster.diagnostics()}"
        print(f"host A cut: learner noticed after {silent - cut:.1f} s; back {back - heal:.1f} s after the heal")

        # The learner ends the run at its time budget; the launcher, the sessions and the blocks end with it.
        code = cluster.wait_exit("launcher", timeout_s=120)
        assert code is not None, f"the launcher outlived the learner's budget\n{cluster.diagnostics()}"
        remote = [p for name in ("sshd-a", "sshd-b") for p in cluster.descendants(cluster.procs[name].pid)]
        actors = [p for p in remote if "-m actor" in cluster.command_line(p)]
        gone = cluster.wait_until(lambda: not [p for p in actors if cluster.is_alive(p)], timeout_s=20)
        assert gone, {p: cluster.command_line(p) for p in actors if cluster.is_alive(p)}
        assert not cluster.leftover_processes(f"{servers.address}:{PORT_BASE}")
        evals = _evals(cluster.run_dir)
        assert max(evals, default=0) >= LEARNED_RETURN, f"eval returns {evals}\n{cluster.diagnostics()}"
        for name in (f"ssh-root_{host_a.address}.log", f"ssh-root_{host_b.address}.log"):
            assert "acting with epsilon" in (cluster.run_dir / "logs" / name).read_text(), name
        del launcher


def test_replay_and_learner_on_different_hosts_send_batches_over_the_socket(cluster: Cluster, tmp_path: Path) -> None:
    with bridge.lan(2) as lan:
        replay_host, learner_host = lan.hosts
        common = ["--seed", "0", "--port-base", str(PORT_BASE), "--run-dir", str(cluster.run_dir)]
        common += [*curve_overrides(tmp_path, "actor"), f"net.replay_host={replay_host.address}"]
        common += [f"stop.eval_return={LEARNED_RETURN}", "stop.eval_consecutive=1", "stop.max_wall_s=90"]
        replay = [sys.executable, "-m", "replay", *common, f"net.bind_host={replay_host.address}"]
        # A /dev/shm of its own, as on another machine: the learner's batch file is not there to write into.
        private_shm = 'mount -t tmpfs -o size=512m tmpfs /dev/shm && exec "$@"'
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", private_shm, "sh", *replay]
        cluster.start("replay", replay_host.command(argv))
        learner = [sys.executable, "-m", "learner", *common, "net.bind_host=0.0.0.0", "log_interval_s=1"]
        cluster.start("learner", learner_host.command([*learner, "--replay-host", replay_host.address]))
        keys = tmp_path / "keys"
        client = ["--learner", f"127.0.0.1:{PORT_BASE}", "--curve-secret-key", str(keys / "actor.key_secret")]
        client += ["--curve-server-key", str(keys / "server.key")]
        for i in (0, 1):
            cluster.start(
                f"actor-{i}", learner_host.command([sys.executable, "-m", "actor", "--actor-index", str(i), *client])
            )
        cluster.start("evaluator", learner_host.command([sys.executable, "-m", "actor", "--evaluate", *client]))
        code = cluster.wait_exit("learner", timeout_s=150)
        assert code is not None, f"the learner did not finish\n{cluster.diagnostics()}"
        summary = json.loads((cluster.run_dir / "summary.json").read_text())
        assert summary["solved"] is True, f"{summary}\n{cluster.diagnostics()}"
        log = cluster.log("learner")
        assert "batches come over the socket" in log, log[-3000:]
        assert max(r.get("learner_updates", 0) for r in _rows(cluster.run_dir)) > 0
