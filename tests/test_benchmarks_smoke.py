"""Smoke test of the benchmark scripts: each runs in its smallest mode, exits 0 and writes its JSON result.

Why: the scripts start real processes and are run by hand, rarely, on quiet machines; without this
they would rot between those runs. They run in three waves: the throughput scripts all at once (the
wave takes about as long as the slowest script), then the learning scripts, each a whole local
cluster, once the first wave is over, then the scale benchmark, a system of its own, alone. Their
numbers are meaningless under that contention and nothing here looks at them, only at the shape of
what they write.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 150.0
HAVE_SB3 = importlib.util.find_spec("stable_baselines3") is not None
# The learning scripts' smallest mode: one seed of distdqn on CartPole (SB3 is an optional extra),
# the cluster stopped after a short wall time: enough to start, train, evaluate and stop it.
SHORT_CLUSTER = ["--systems", "distdqn", "stop.max_wall_s=20"]
# Where a learning script's results hold the distdqn runs, each of which must have stepped envs.
CLUSTER_RUNS = {"cartpole_solve": ("distdqn",), "learning_suite": ("CartPole-v1", "distdqn")}


@dataclass(frozen=True)
class Script:
    argv: tuple[str, ...]  # after `python benchmarks/NAME.py`
    results: frozenset[str]  # keys its JSON results must have; empty: it writes no JSON
    wave: int


def _script(wave: int, results: set[str], *argv: str) -> Script:
    return Script(argv, frozenset(results), wave)


SCRIPTS = {
    "replay_throughput": _script(
        1, {"ingest", "sample_at_rate", "raw_distdqn_options", "ratios", "server_rejected"}, "--quick"
    ),
    "weights_latency": _script(1, {"phases", "ratios", "subscribers"}, "--quick"),
    "actor_throughput": _script(
        1, {"raw_env_steps_per_s", "actor_env_steps_per_s", "ratio", "replay_inserted"}, "--quick"
    ),
    "learner_throughput": _script(
        1, {"wire_updates_per_s", "memory_updates_per_s", "wire_wait_fraction", "ratio"}, "--quick"
    ),
    # A whole system (servers, relay, actor hosts) of its own: alone, after the learning scripts.
    "scale_actors": _script(3, {"phases", "accounting", "shards", "weights_bytes"}, "--quick"),
    "auth_cost": _script(1, {f"{s}/{m}" for s in ("cartpole", "atari") for m in ("plain", "curve", "ipc")}, "--quick"),
    "cartpole_solve": _script(2, {"distdqn"}, "--quick", *SHORT_CLUSTER),
    "learning_suite": _script(2, {"seeds", "CartPole-v1"}, "--quick", "--envs", "CartPole-v1", *SHORT_CLUSTER),
    # The peer learning_suite times; it prints evaluations and writes no JSON.
    "sb3_dqn": _script(2, set(), "--env", "CartPole-v1", "--seed", "0", "--timesteps", "600", "--eval-every", "300"),
}


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    result: Path
    log: Path

    def output(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no output)"
        return "\n".join(text.splitlines()[-lines:])


class Launcher:
    """Starts a wave of scripts on first need; a later wave only once every earlier run has ended."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.runs: dict[str, Run] = {}
        self.started_waves: set[int] = set()

    def run(self, name: str) -> Run:
        wave = SCRIPTS[name].wave
        if wave not in self.started_waves:
            self._settle()
            self._start(wave)
        return self.runs[name]

    def _start(self, wave: int) -> None:
        self.started_waves.add(wave)
        for name, script in SCRIPTS.items():
            if script.wave != wave or (name == "sb3_dqn" and not HAVE_SB3):
                continue
            result, log = self.out / f"{name}.json", self.out / f"{name}.log"
            argv = [sys.executable, str(REPO_ROOT / "benchmarks" / f"{name}.py"), *script.argv]
            if script.results:
                argv += ["--json", str(result)]
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    argv,
                    cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            self.runs[name] = Run(process, result, log)

    def _settle(self) -> None:
        """Let the running wave end (its own test reports a run that does not)."""
        for run in self.runs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                run.process.wait(timeout=TIMEOUT_S)

    def close(self) -> None:
        for run in self.runs.values():  # SIGTERM: each script stops its own children, then exits
            if run.process.poll() is None:
                run.process.terminate()
        for run in self.runs.values():
            try:
                run.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.process.pid, signal.SIGKILL)
                run.process.wait(timeout=5)


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launcher]:
    started = Launcher(tmp_path_factory.mktemp("benchmarks"))
    try:
        yield started
    finally:
        started.close()


def test_every_benchmark_script_is_smoke_tested() -> None:
    scripts = {p.stem for p in (REPO_ROOT / "benchmarks").glob("*.py")}
    assert scripts == set(SCRIPTS)


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_smallest_run_writes_result(launcher: Launcher, name: str) -> None:
    if name == "sb3_dqn" and not HAVE_SB3:
        pytest.skip("stable-baselines3 (the bench extra) is not installed")
    run = launcher.run(name)
    try:
        code = run.process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} still ran after {TIMEOUT_S:g} s\n{run.output()}")
    assert code == 0, f"{name} exited with {code}\n{run.output()}"
    expected = SCRIPTS[name].results
    if not expected:
        assert "eval steps=" in run.log.read_text(errors="replace"), run.output()
        return
    data = json.loads(run.result.read_text())
    assert data["benchmark"] == name
    assert {"args", "machine", "results", "finished_at"} <= set(data)
    assert data["machine"]["cpu_count"] >= 1
    missing = expected - set(data["results"])
    assert not missing, f"{name}: results lack {sorted(missing)}\n{run.output()}"
    if name in CLUSTER_RUNS:
        system = data["results"]
        for key in CLUSTER_RUNS[name]:
            system = system[key]
        assert system["runs"] and all(r.get("env_steps", 0) > 0 for r in system["runs"]), run.output()
