"""Launch-to-threshold timing of one learning run: distdqn's local cluster, or a peer's script.

Why one clock for both: the figure is a ratio of times to the same evaluation threshold, so both
sides are timed the same way, from the moment the process starts to the first greedy evaluation
whose mean reaches it, evaluation time included (cartpole_solve.py and learning_suite.py share this).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from harness import REPO_ROOT
from harness.processes import free_port_base

SOLVED = 475.0  # CartPole-v1's threshold
EVAL_LINE = re.compile(r"^eval\s+t=\s*[\d.]+s\s+steps=\s*(\d+)\s+return\s+(-?[\d.]+)")  # distdqn's evaluator
SB3_EVAL = re.compile(r"^eval steps=(\d+) return (-?[\d.]+)")  # what the SB3 peers print


def run_timed(
    cmd: list[str], pattern: re.Pattern[str], timeout_s: float, log: Path, threshold: float = SOLVED
) -> dict[str, Any]:
    """Run one process; time from its start to the first evaluation >= `threshold` it prints."""
    start = time.monotonic()
    first: tuple[float, int] | None = None
    last: float | None = None
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=out,
            text=True,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                match = pattern.match(line.strip())
                if match:
                    steps, value = int(match.group(1)), float(match.group(2))
                    last = value
                    if first is None and value >= threshold:
                        first = (time.monotonic() - start, steps)
                if time.monotonic() - start > timeout_s:
                    break
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    return {
        "solve_s": round(first[0], 2) if first else None,
        "solve_env_steps": first[1] if first else None,
        "final_eval": last,
        "total_s": round(time.monotonic() - start, 2),
        "exit_code": proc.returncode,
    }


def run_distdqn(
    seed: int, timeout_s: float, workdir: Path, extra: list[str], preset: str = "cartpole", threshold: float = SOLVED
) -> dict[str, Any]:
    """One local cluster of `preset` (its own stop condition, at most `timeout_s`), timed to `threshold`."""
    run_dir = workdir / f"distdqn-{preset}-s{seed}"
    cmd = [
        "bash",
        "scripts/launch_cluster.sh",
        "--preset",
        preset,
        "--seed",
        str(seed),
        "--run-dir",
        str(run_dir),
        "--port-base",
        str(free_port_base()),
        f"stop.max_wall_s={timeout_s}",
        *extra,
    ]
    result = run_timed(cmd, EVAL_LINE, timeout_s + 30, workdir / f"distdqn-{preset}-s{seed}.log", threshold)
    summary = run_dir / "summary.json"
    if summary.exists():
        data = json.loads(summary.read_text())
        result.update(solved=data["solved"], env_steps=data["env_steps"], learner_updates=data["learner_updates"])
    return result
