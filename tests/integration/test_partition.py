"""A network partition between an actor and the servers: noticed within seconds, healed by itself.

Replay and learner run in one network namespace, one actor in another, joined by a veth pair (see
tests/integration/netns.py; CurveZMQ, since the servers listen off loopback). Once training runs, both
ends of the pair go down: nothing passes and new connections fail at once. Both sides must say so in
their logs within the heartbeat bound, and when the link comes back the actor must reconnect by itself
and training must go on with its data.

Detection is the control connection's job. The actor's transitions (PUSH to replay) and the weight
broadcast (PUB to SUB) carry no heartbeats (see `common.sockets.make_socket`) and ride the partition
out on TCP retransmission, so for them the test checks only that data flows again afterwards.
"""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.integration.netns import Link, keygen, veth_link

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

PORT_BASE = 47410  # namespace-local: nothing else listens inside a fresh namespace
DETECT_S = 10.0  # heartbeats: 1 s interval, 5 s timeout; silent actors: 5 s, checked every second
RECOVER_S = 15.0
_STAMP = re.compile(r"^\[[^\]]+\] (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@pytest.fixture
def link() -> Iterator[Link]:
    with veth_link() as made:
        yield made


def _logged_at(text: str, needle: str, since: float) -> float | None:
    """Wall time of the first log line at or after `since` that contains `needle`."""
    for line in text.splitlines():
        match = _STAMP.match(line)
        if match and needle in line:
            stamp = datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp()
            if stamp >= since - 0.005:  # the log's clock has millisecond resolution
                return stamp
    return None


def _env_steps(cluster: Cluster) -> int:
    rows = [r for r in cluster.metrics() if "env_steps" in r and "eval_return_mean" not in r]
    return rows[-1]["env_steps"] if rows else 0


def _wait_for_lines(
    cluster: Cluster, expected: dict[str, tuple[str, str]], since: float, timeout_s: float
) -> dict[str, float]:
    """Wait until every (process, text) in `expected` is logged after `since`; seconds after `since` each."""

    def found() -> dict[str, float] | None:
        at = {what: _logged_at(cluster.log(proc), text, since) for what, (proc, text) in expected.items()}
        return {what: t - since for what, t in at.items() if t is not None} if all(at.values()) else None

    seen = cluster.wait_until(found, timeout_s=timeout_s, interval_s=0.2)
    if seen is None:
        missing = {
            what: text for what, (proc, text) in expected.items() if _logged_at(cluster.log(proc), text, since) is None
        }
        pytest.fail(f"not logged within {timeout_s:g} s: {missing}\n{cluster.diagnostics(40)}")
    return seen


def test_a_partitioned_actor_is_noticed_within_seconds_and_recovers_by_itself(
    link: Link, cluster: Cluster, tmp_path: Path
) -> None:
    keys, authorized = tmp_path / "keys", tmp_path / "authorized"
    for name in ("server", "actor"):
        keygen(keys, name)
    authorized.mkdir(mode=0o755)
    shutil.copy(keys / "actor.key", authorized / "actor.key")
    server_args = [
        *("--preset", "cartpole", "--seed", "0", "--port-base", str(PORT_BASE), "--run-dir", str(cluster.run_dir)),
        f"net.bind_host={link.server_ip}",
        f"net.curve_secret_key={keys / 'server.key_secret'}",
        f"net.curve_server_key={keys / 'server.key'}",
        f"net.curve_authorized_dir={authorized}",
        "actor.num_actors=1",
        "replay.min_size=500",
        "stop.eval_return=1000000",
        "stop.max_wall_s=180",
        "log_interval_s=1",
    ]
    server = link.server_ns
    cluster.start("replay", link.command(server, [sys.executable, "-m", "replay", *server_args]))
    learner_argv = [sys.executable, "-m", "learner", *server_args, "--replay-host", link.server_ip]
    cluster.start("learner", link.command(server, learner_argv))
    actor_argv = [sys.executable, "-m", "actor", "--learner", f"{link.server_ip}:{PORT_BASE}", "--actor-index", "0"]
    actor_argv += ["--curve-secret-key", str(keys / "actor.key_secret"), "--curve-server-key", str(keys / "server.key")]
    actor = cluster.start("actor-0", link.command(link.client_ns, actor_argv))
    assert cluster.wait_until(lambda: _env_steps(cluster) > 0, timeout_s=90), (
        f"training did not start across the link\n{cluster.diagnostics()}"
    )

    learner_control = f"{link.server_ip}:{PORT_BASE}"
    cut = time.time()
    link.set_up(False)
    steps_at_cut = _env_steps(cluster)
    lost = _wait_for_lines(
        cluster,
        {
            "actor: learner control": ("actor-0", f"connection to learner control {learner_control} lost"),
            "learner: connection": ("learner", f"learner control {learner_control}: connection from {link.client_ip}:"),
            "learner: actor silent": ("learner", "actor 0 silent for"),
        },
        cut,
        timeout_s=DETECT_S + 5,
    )
    print("partition noticed after " + ", ".join(f"{what} {s:.1f} s" for what, s in sorted(lost.items())))
    assert max(lost.values()) <= DETECT_S, f"noticed too late: {lost}"
    assert actor.poll() is None, f"the actor exited during the partition\n{cluster.diagnostics()}"

    heal = time.time()
    link.set_up(True)
    back = _wait_for_lines(
        cluster,
        {
            "actor: learner control": ("actor-0", f"connection to learner control {learner_control} re-established"),
            "learner: connection": ("learner", f"learner control {learner_control}: {link.client_ip}:"),
            "learner: actor reporting": ("learner", "actor 0 is reporting again"),
        },
        heal,
        timeout_s=RECOVER_S + 5,
    )
    print("partition healed after " + ", ".join(f"{what} {s:.1f} s" for what, s in sorted(back.items())))
    assert max(back.values()) <= RECOVER_S, f"recovered too late: {back}"
    assert "connected again after" in cluster.log("learner")

    # Training goes on with the same actor process: its env steps keep arriving at the learner.
    steps_at_heal = _env_steps(cluster)
    assert cluster.wait_until(lambda: _env_steps(cluster) > max(steps_at_heal, steps_at_cut) + 200, timeout_s=30), (
        f"env steps stalled after the partition healed ({steps_at_heal})\n{cluster.diagnostics()}"
    )
    print(f"env steps: {steps_at_cut} at the cut, {_env_steps(cluster)} {time.time() - heal:.1f} s after the heal")
    assert actor.poll() is None
    assert "Traceback" not in cluster.log("actor-0") + cluster.log("learner") + cluster.log("replay")
