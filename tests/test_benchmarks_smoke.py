"""Smoke test of the benchmark scripts: each runs with --quick, exits 0 and writes its JSON result.

Why: the scripts start real processes and are run by hand, rarely, on quiet machines; without this
they would rot between those runs. All four start at once, so the whole test takes about as long as
the slowest script on a small machine; their numbers are meaningless under that contention and
nothing here looks at them, only at the shape of what they write.
"""

from __future__ import annotations

import contextlib
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
EXPECTED_RESULTS = {
    "replay_throughput": {"ingest", "sample_at_rate", "raw_distdqn_options", "ratios", "server_rejected"},
    "weights_latency": {"phases", "ratios", "subscribers"},
    "actor_throughput": {"raw_env_steps_per_s", "actor_env_steps_per_s", "ratio", "replay_inserted"},
    "learner_throughput": {"wire_updates_per_s", "memory_updates_per_s", "wire_wait_fraction", "ratio"},
}


@dataclass
class Run:
    process: subprocess.Popen[bytes]
    result: Path
    log: Path

    def output(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no output)"
        return "\n".join(text.splitlines()[-lines:])


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Run]]:
    out = tmp_path_factory.mktemp("benchmarks")
    started: dict[str, Run] = {}
    try:
        for name in EXPECTED_RESULTS:
            result, log = out / f"{name}.json", out / f"{name}.log"
            argv = [sys.executable, str(REPO_ROOT / "benchmarks" / f"{name}.py"), "--quick", "--json", str(result)]
            with log.open("wb") as sink:
                process = subprocess.Popen(
                    argv,
                    cwd=REPO_ROOT,
                    stdin=subprocess.DEVNULL,
                    stdout=sink,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            started[name] = Run(process, result, log)
        yield started
    finally:
        for run in started.values():  # SIGTERM: each script stops its own children, then exits
            if run.process.poll() is None:
                run.process.terminate()
        for run in started.values():
            try:
                run.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(run.process.pid, signal.SIGKILL)
                run.process.wait(timeout=5)


@pytest.mark.parametrize("name", sorted(EXPECTED_RESULTS))
def test_quick_run_writes_result(runs: dict[str, Run], name: str) -> None:
    run = runs[name]
    try:
        code = run.process.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} --quick still ran after {TIMEOUT_S:g} s\n{run.output()}")
    assert code == 0, f"{name} --quick exited with {code}\n{run.output()}"
    data = json.loads(run.result.read_text())
    assert data["benchmark"] == name
    assert {"args", "machine", "results", "finished_at"} <= set(data)
    assert data["machine"]["cpu_count"] >= 1
    missing = EXPECTED_RESULTS[name] - set(data["results"])
    assert not missing, f"{name}: results lack {sorted(missing)}\n{run.output()}"
