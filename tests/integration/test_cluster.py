"""Whole-cluster tests: real replay, learner, evaluator and actor processes talking over loopback ZeroMQ.

Each test bounds its own run time with deadlines on every wait (no test may hang a CI job), and the
`cluster` fixture kills whatever a test started, whether it passed or not.
"""

from __future__ import annotations

import json
import math
import re
import signal
import time
from typing import TYPE_CHECKING

import pytest
import zmq

from common.wire import Encoder, Message, decode, kind_prefix

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

RANDOM_CARTPOLE_RETURN = 22.0
LEARNED_RETURN = 150.0
SHUTDOWN_S = 10.0
STALE_SLACK_S = 5.0
ROLE_MODULES = ("-m replay", "-m learner", "-m actor")
JOINED = re.compile(r"joined run (\S+) with weights v(\d+)")
ACTING = re.compile(r"acting with epsilon")


def _fail_if_exited(cluster: Cluster) -> None:
    """A process that died while we wait for it to make progress is the failure, not the later timeout."""
    for name, proc in cluster.procs.items():
        code = proc.poll()
        if code is not None:
            pytest.fail(f"{name} exited early with status {code}\n{cluster.diagnostics()}")


def _role_processes(pids: list[int], cluster: Cluster) -> dict[int, str]:
    """The distdqn processes among `pids` (the launcher's helper shells and checks excluded)."""
    found = {}
    for pid in pids:
        cmd = cluster.command_line(pid)
        if any(module in cmd for module in ROLE_MODULES):
            found[pid] = cmd
    return found


# ---- 1. the cluster learns ---------------------------------------------------------------------
def test_cluster_learns_cartpole(cluster: Cluster) -> None:
    """The whole pipeline works end to end only if a greedy policy ends up far better than random."""
    began = time.monotonic()
    cluster.start_launcher(
        "--run-dir",
        str(cluster.run_dir),
        "--port-base",
        str(cluster.port_base),
        "--seed",
        "0",
        f"stop.eval_return={LEARNED_RETURN:g}",
        "stop.eval_consecutive=1",
        "stop.max_wall_s=120",
        "log_interval_s=1",
    )
    code = cluster.wait_exit("launcher", timeout_s=200)
    assert code is not None, f"the launcher still ran after 200 s\n{cluster.diagnostics()}"
    out = cluster.stdout("launcher")
    assert code == 0, f"launcher exit status {code} (0 means solved)\n{cluster.diagnostics()}"
    assert re.search(r"^SOLVED: solved after", out, re.MULTILINE), f"no SOLVED summary\n{cluster.diagnostics()}"

    rows = cluster.metrics()
    evals = [r["eval_return_mean"] for r in rows if "eval_return_mean" in r]
    assert evals, f"no evaluations in metrics.jsonl\n{cluster.diagnostics()}"
    assert max(evals) >= LEARNED_RETURN > 5 * RANDOM_CARTPOLE_RETURN, f"eval returns {evals}\n{cluster.diagnostics()}"
    assert max(r.get("learner_updates", 0) for r in rows) > 0, f"the learner never updated\n{cluster.diagnostics()}"
    trained = [r for r in rows if r.get("updates_per_s")]
    assert trained and all(math.isfinite(r["loss"]) and math.isfinite(r["q_mean"]) for r in trained), trained[-3:]
    assert max(r.get("replay_size", 0) for r in rows) > 0, f"replay always reported empty\n{cluster.diagnostics()}"
    summary = json.loads((cluster.run_dir / "summary.json").read_text())
    assert summary["solved"] is True and summary["best_eval_return"] >= LEARNED_RETURN, summary
    assert (cluster.run_dir / "checkpoints" / "latest.pt").is_file()
    assert time.monotonic() - began < 200


# ---- 2. a late joiner starts from the current weights ------------------------------------------
class WeightWatcher:
    """A SUB client on the learner's broadcast socket that remembers the newest weight version seen."""

    def __init__(self, ctx: zmq.Context, port: int) -> None:
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        for kind in ("weights", "stop"):
            self.sub.setsockopt(zmq.SUBSCRIBE, kind_prefix(kind))
        self.sub.connect(f"tcp://127.0.0.1:{port}")
        self.latest = -1
        self.history: list[tuple[float, int]] = []  # (monotonic time received, version)

    def drain(self) -> int:
        while True:
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return self.latest
            msg = decode(frames, expect=("weights", "stop"))
            if msg.kind == "weights":
                self.latest = max(self.latest, msg.meta["version"])
                self.history.append((time.monotonic(), self.latest))

    def latest_before(self, when: float) -> int:
        return max((version for t, version in self.history if t <= when), default=-1)


def _request(sock: zmq.Socket, frames: list, expect: str, timeout_s: float = 10.0) -> Message:
    sock.send_multipart(frames)
    assert sock.poll(int(timeout_s * 1000)), f"no {expect} reply within {timeout_s:g} s"
    return decode(sock.recv_multipart(copy=False), expect=(expect,))


def test_late_joiner_starts_with_current_weights(cluster: Cluster) -> None:
    """An actor that joins a running learner must act with its current weights, never with random ones."""
    overrides = ("actor.num_actors=2", "log_interval_s=1", "stop.max_wall_s=150", "stop.eval_return=1000000")
    cluster.start_replay(*overrides)
    cluster.start_learner(*overrides)
    cluster.start_actor(0)
    ctx = zmq.Context()
    try:
        watcher = WeightWatcher(ctx, cluster.port_base + 1)

        def published_several() -> bool:
            _fail_if_exited(cluster)
            return watcher.drain() >= 5

        assert cluster.wait_until(published_several, timeout_s=90), (
            f"the learner published only up to v{watcher.latest} in 90 s\n{cluster.diagnostics()}"
        )
        before = watcher.drain()
        cluster.start_actor(1, "--verbose")

        def joined_and_acting() -> re.Match[str] | None:
            _fail_if_exited(cluster)
            watcher.drain()
            text = cluster.log("actor-1")
            return JOINED.search(text) if ACTING.search(text) else None

        joined = cluster.wait_until(joined_and_acting, timeout_s=60)
        seen_at = time.monotonic()
        log = cluster.log("actor-1")
        assert joined is not None, f"the late actor never joined and acted\n{cluster.diagnostics()}"
        version = int(joined.group(2))
        latest = watcher.drain()
        assert before <= version <= latest, f"joined with v{version}; published v{before} before it started"
        # "Current", not merely "not the first": at most a few seconds (of actor start-up) behind.
        recent = watcher.latest_before(seen_at - STALE_SLACK_S)
        assert version >= recent, f"joined with v{version}, but v{recent} was out {STALE_SLACK_S:g} s before"
        assert joined.start() < ACTING.search(log).start(), f"acted before loading weights:\n{log}"

        # The same guarantee at the protocol level: get_weights is never behind the last broadcast.
        control = ctx.socket(zmq.DEALER)
        control.setsockopt(zmq.LINGER, 0)
        control.connect(f"tcp://{cluster.learner_address}")
        encode = Encoder("integration-probe")
        welcome = _request(control, encode("hello", {"role": "evaluator", "actor_index": -1}), "welcome")
        assert welcome.meta["config"]["net"]["learner_port"] == cluster.port_base
        assert welcome.meta["run_id"] == joined.group(1)
        for _ in range(3):  # a few samples while the learner keeps publishing
            broadcast = watcher.drain()
            reply = _request(control, encode("get_weights"), "weights")
            assert reply.meta["version"] >= broadcast, f"get_weights gave v{reply.meta['version']} after v{broadcast}"
            assert reply.arrays, "a weights reply without arrays"
            time.sleep(1.6)  # the learner answers one peer's get_weights at a bounded rate
    finally:
        ctx.destroy(linger=0)


# ---- 3. SIGTERM to the launcher stops everything -----------------------------------------------
def test_sigterm_to_launcher_leaves_no_process_behind(cluster: Cluster) -> None:
    """Stopping the launcher must stop every process it started; an orphaned actor would run forever."""
    run_dir = str(cluster.run_dir)
    launcher = cluster.start_launcher(
        "--run-dir",
        run_dir,
        "--port-base",
        str(cluster.port_base),
        "stop.eval_return=1000000",
        "stop.max_wall_s=150",
        "log_interval_s=1",
    )

    def running() -> dict[int, str]:
        _fail_if_exited(cluster)
        roles = _role_processes(cluster.remember_descendants(), cluster)
        training = re.search(r"^train ", cluster.stdout("launcher"), re.MULTILINE)
        return roles if training and len(roles) >= 5 else {}

    roles = cluster.wait_until(running, timeout_s=90)
    assert roles, f"the cluster did not come up within 90 s\n{cluster.diagnostics()}"
    recorded = cluster.remember_descendants()
    launcher.send_signal(signal.SIGTERM)

    def all_gone() -> bool:
        return (
            launcher.poll() is not None
            and not any(cluster.is_alive(pid) for pid in recorded)
            and not cluster.leftover_processes(run_dir)
            and not cluster.leftover_processes(cluster.learner_address)
        )

    gone = cluster.wait_until(all_gone, timeout_s=SHUTDOWN_S, interval_s=0.1)
    alive = {pid: cluster.command_line(pid) for pid in recorded if cluster.is_alive(pid)}
    leftovers = cluster.leftover_processes(run_dir) | cluster.leftover_processes(cluster.learner_address)
    assert launcher.poll() is not None, f"the launcher still runs {SHUTDOWN_S:g} s after SIGTERM"
    assert gone, f"still alive after {SHUTDOWN_S:g} s: {alive} {leftovers}\n{cluster.diagnostics()}"
    assert launcher.returncode == 128 + signal.SIGTERM, f"launcher status {launcher.returncode}"
    assert (cluster.run_dir / "checkpoints" / "latest.pt").is_file(), f"no final checkpoint\n{cluster.diagnostics()}"


# ---- 4. bad input is refused before anything starts --------------------------------------------
@pytest.mark.parametrize(
    ("bad", "names"),
    [(["--num-actors", "zero"], "--num-actors"), (["learner.lr=abc"], "learner.lr")],
    ids=["num-actors-zero", "lr-not-a-number"],
)
def test_bad_cli_input_is_one_line_and_starts_nothing(cluster: Cluster, bad: list[str], names: str) -> None:
    """A typo must cost one clear line, not a half-started cluster with several tracebacks."""
    run_dir = str(cluster.run_dir)
    cluster.start_launcher(*bad, "--run-dir", run_dir, "--port-base", str(cluster.port_base))
    code = cluster.wait_exit("launcher", timeout_s=60)
    assert code == 2, f"exit status {code}\n{cluster.diagnostics()}"
    errors = cluster.log("launcher").strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), f"stderr: {errors}"
    assert names in errors[0], errors[0]
    assert "started" not in cluster.stdout("launcher")
    assert not cluster.leftover_processes(run_dir)
    assert not cluster.leftover_processes(cluster.learner_address)
    assert not list((cluster.run_dir / "logs").glob("*.log")), "role logs were written: something started"
