"""Conformance: an actor written from docs/protocol.md alone takes part in a real run, and its books balance.

`foreign_actor.py` stands for an actor from another codebase (pyzmq, msgpack, numpy and gymnasium
only). Here it joins a real replay server and learner with index -1, acts on CartPole with the Q the
document defines, pushes its transitions, reports, follows new weight versions from the broadcast,
stops on the learner's `stop` and closes its stream. Replay must have stored every transition it sent
and refused no message of it; the learner must have counted its steps and refused none of its reports.

Rate limiting is off (`replay.samples_per_insert=0`): once the learner has stopped sampling, a limiter
would hold the actor's last messages back unstored, which is the accounting test's subject, not this one.
"""

from __future__ import annotations

import ast
import json
import signal
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

FOREIGN_ACTOR = Path(__file__).with_name("foreign_actor.py")
ALLOWED_IMPORTS = {"gymnasium", "msgpack", "numpy", "zmq"}
OVERRIDES = (
    "replay.samples_per_insert=0",
    "replay.min_size=256",
    "learner.batch_size=64",
    "learner.publish_period=10",
    "stop.max_updates=300",
    "stop.eval_return=1000000",
    "stop.max_wall_s=120",
    "log_interval_s=1",
    "actor.stats_interval_s=0.5",
)


def actor_credentials(cluster: Cluster) -> list[str]:
    """The flags that give the foreign actor its keys, where the servers require them.

    The run's servers take no CURVE settings here, so a loopback client needs none; the actor's
    `--curve-secret-key PATH --curve-server-key PATH` (pyzmq certificate files) are its only input for them.
    """
    return []


def test_foreign_actor_imports_nothing_of_distdqn() -> None:
    tree = ast.parse(FOREIGN_ACTOR.read_text(encoding="utf-8"))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            imported.add((node.module or "").split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == ALLOWED_IMPORTS


def _ledger(cluster: Cluster) -> dict:
    return json.loads((cluster.run_dir / "replay" / "accounting.json").read_text())


def test_a_foreign_actor_joins_acts_follows_weights_and_closes_its_stream(cluster: Cluster) -> None:
    cluster.start_replay(*OVERRIDES)
    cluster.start_learner(*OVERRIDES)
    report_path = cluster.tmp_path / "foreign-actor.json"
    argv = [sys.executable, str(FOREIGN_ACTOR), "--learner", cluster.learner_address, "--report", str(report_path)]
    cluster.start("foreign-actor", [*argv, "--max-seconds", "150", *actor_credentials(cluster)])

    code = cluster.wait_exit("foreign-actor", timeout_s=180)
    assert code == 0, f"the foreign actor ended with {code}\n{cluster.diagnostics()}"
    report = json.loads(report_path.read_text())
    assert report["project_modules"] == [], "the foreign actor loaded distdqn modules"
    assert report["stop_reason"], report  # set only by a stop broadcast
    assert cluster.wait_exit("learner", timeout_s=60) is not None, f"the learner did not stop\n{cluster.diagnostics()}"
    cluster.procs["replay"].send_signal(signal.SIGTERM)
    assert cluster.wait_exit("replay", timeout_s=30) == 0, f"replay did not stop\n{cluster.diagnostics()}"

    # It followed the broadcast: at least two versions newer than the one it started with, in order.
    versions = report["applied_versions"]
    assert len(versions) >= 2 and versions == sorted(set(versions)), report
    assert versions[0] > report["initial_version"] >= 0, report
    # It joined with -1 and got an index, and an epsilon that still explores.
    assert report["actor_index"] >= 0 and 0.4**8 <= report["epsilon"] <= 1, report

    # Every transition it sent is stored, its stream is closed and balanced, and nothing of it was refused.
    ledger = _ledger(cluster)
    rows = [r for r in ledger["streams"] if r["stream"] == report["stream"]]
    assert len(rows) == 1, f"{report}\n{ledger}"
    (row,) = rows
    assert row["actor_index"] == report["actor_index"], row
    assert row["closed"] and row["balanced"], row
    assert report["sent"] >= 256 and row["sent"] == report["sent"] == row["stored"], (row, report)
    assert (row["rejected"], row["dropped"], row["lost"]) == ({}, 0, 0), row
    assert row["actor_dropped"] == report["dropped"], (row, report)
    assert ledger["rejected_messages"] == {}, ledger["rejected_messages"]

    # The learner took its reports: its steps count toward the run, and no control message was refused.
    summary = json.loads((cluster.run_dir / "summary.json").read_text())
    assert 0 < summary["env_steps"] <= report["env_steps"], (summary, report)
    assert report["reports"] >= 2, report
    assert "rejected a control message" not in cluster.log("learner"), cluster.diagnostics()


# ---- the reference actor against the same rules ---------------------------------------------------
class _Link:
    """What Actor uses of its LearnerLink: no weights ever change, and reports are recorded."""

    learner_host = "127.0.0.1"
    curve = None
    version = 1
    stop_reason = None

    def __init__(self) -> None:
        from common.wire import Encoder

        self.encode = Encoder("reference-actor")
        self.reports: list[float] = []

    def newest_weights(self, load=None, attach=None) -> None:
        return None

    def weights_whole(self) -> bool:
        return True

    def send(self, kind: str, meta: dict, arrays: dict) -> bool:
        if kind == "actor_stats":
            self.reports.append(time.monotonic())
        return True


class _FullPush:
    """A PUSH socket whose queue never drains: replay is holding inserts back."""

    def poll(self, timeout_ms: int, flags: int) -> int:
        time.sleep(timeout_ms / 1000)
        return 0

    def close(self, linger: int = 0) -> None:
        pass


def test_the_reference_actor_keeps_reporting_while_it_waits_to_send() -> None:
    """docs/protocol.md, Backpressure: reports keep flowing while the PUSH socket is full."""
    from actor.actor import Actor
    from common.config import load_config

    link = _Link()
    config = load_config("cartpole", ["actor.stats_interval_s=0.2", "actor.send_size=8", "network.hidden=[8]"])
    actor = Actor(link, config, actor_index=0)
    actor.push.close(linger=0)
    actor.push = _FullPush()
    stop = threading.Event()
    worker = threading.Thread(target=actor.run, args=(stop,))
    worker.start()
    try:
        time.sleep(2.0)  # the first message fills within a few steps; then every send waits
    finally:
        stop.set()
        worker.join(timeout=10)
        actor.env.close()
        actor._push_ctx.term()
    assert actor.transitions_sent == 0 and actor.transitions_dropped > 0, "the actor was never blocked"
    waiting = [t for t in link.reports[:-1]]  # the last one is the report at exit
    assert len(waiting) >= 5, f"{len(waiting)} reports in 2 s at one per 0.2 s"
