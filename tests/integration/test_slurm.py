"""scripts/slurm/distdqn.sbatch on a real (one-node) Slurm: it learns, scancel ends it cleanly, a resubmission resumes.

The cluster is munged, slurmctld and slurmd started by the test with its own config (see
tests/integration/slurm.py). The servers listen on 127.0.0.1 only (DISTDQN_BIND_HOST), with CurveZMQ on
as on a real allocation, and the job's keys are made by the batch script in the run directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import torch

from tests.integration import slurm
from tests.integration.netns import REPO_ROOT

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

SBATCH = REPO_ROOT / "scripts" / "slurm" / "distdqn.sbatch"
LEARNED_RETURN = 400.0


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[slurm.Slurm]:
    with slurm.one_node_cluster(tmp_path / "slurm") as made:
        yield made


def _evals(run_dir: Path) -> list[float]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip().endswith("}")]
    return [r["eval_return_mean"] for r in rows if "eval_return_mean" in r]


def _gone(engine: slurm.Slurm, job: int, cluster: Cluster, timeout_s: float) -> bool:
    return bool(cluster.wait_until(lambda: engine.job_state(job) == "", timeout_s=timeout_s, interval_s=0.5))


def test_slurm_job_learns_stops_on_scancel_and_resumes(engine: slurm.Slurm, cluster: Cluster, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    env = {
        "DISTDQN_RUN_DIR": str(run_dir),
        "DISTDQN_PORT_BASE": str(cluster.port_base),
        "DISTDQN_HEAD_ADDR": "127.0.0.1",
        "DISTDQN_BIND_HOST": "127.0.0.1",
    }
    common = ["--ntasks=2", f"--chdir={REPO_ROOT}", "--time=10", str(SBATCH), "--seed", "0", "log_interval_s=1"]
    common += ["learner.checkpoint_interval_s=5", "replay.snapshot_interval_s=5"]
    diagnostics = lambda: f"{cluster.diagnostics()}\n{engine.logs()}\n{_outputs(tmp_path)}"  # noqa: E731

    # 1. The job learns: the greedy evaluation return climbs far above random (about 22).
    job = engine.sbatch(f"--output={tmp_path / 'job1.out'}", *common, "stop.eval_return=1000000", env=env)
    learned = cluster.wait_until(lambda: max(_evals(run_dir), default=0) >= LEARNED_RETURN, timeout_s=120)
    assert learned, f"no evaluation reached {LEARNED_RETURN}: {_evals(run_dir)}\n{diagnostics()}"
    assert engine.job_state(job) == "RUNNING"
    keys = run_dir / "keys"
    assert oct((keys / "server.key_secret").stat().st_mode & 0o777) == "0o600"
    assert oct((keys / "actor.key_secret").stat().st_mode & 0o777) == "0o600"

    # 2. scancel: the run stops cleanly, with a final checkpoint, and leaves no process behind.
    cancelled = time.monotonic()
    assert engine.run("scancel", str(job)).returncode == 0
    assert _gone(engine, job, cluster, 60), f"job {job} still queued after scancel\n{diagnostics()}"
    stop_s = time.monotonic() - cancelled
    left = cluster.wait_until(lambda: not cluster.leftover_processes(str(run_dir)), timeout_s=15)
    assert left, f"processes left after scancel: {cluster.leftover_processes(str(run_dir))}\n{diagnostics()}"
    state = torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)
    updates = int(state["updates"])
    assert updates > 0, state.keys()
    learner_log = (run_dir / "logs" / "learner.log").read_text()
    assert "Traceback" not in learner_log, learner_log[-2000:]
    assert "SIGTERM: scancel or the time limit" in (tmp_path / "job1.out").read_text(), diagnostics()
    print(f"scancel: job gone after {stop_s:.1f} s; checkpoint at update {updates}")

    # 3. The same job again resumes from that checkpoint and replay's snapshot, and solves from there.
    job = engine.sbatch(
        f"--output={tmp_path / 'job2.out'}", *common, f"stop.eval_return={LEARNED_RETURN}", "stop.eval_consecutive=1",
        env=env,
    )  # fmt: skip
    assert _gone(engine, job, cluster, 150), f"the resumed job did not finish\n{diagnostics()}"
    learner_log = (run_dir / "logs" / "learner.log").read_text()
    resumed = [line for line in learner_log.splitlines() if "resumed at update" in line]
    assert resumed and f"resumed at update {updates}," in resumed[-1], f"{resumed}\n{diagnostics()}"
    assert "restored" in (run_dir / "logs" / "replay.log").read_text().lower(), diagnostics()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["solved"] is True, summary
    updates_solved = int(torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["updates"])
    assert updates_solved > updates
    assert not cluster.leftover_processes(str(run_dir))

    # 4. The time limit's warning (SIGUSR1 to the batch shell, as --signal=B:USR1@90 sends it) stops the
    # run the same way, with a final checkpoint past the one it resumed from.
    job = engine.sbatch(f"--output={tmp_path / 'job3.out'}", *common, "stop.eval_return=1000000", env=env)
    learner_log = run_dir / "logs" / "learner.log"
    resumed = cluster.wait_until(
        lambda: learner_log.read_text().count("resumed at update") == 2 and len(_evals(run_dir)) > 2, timeout_s=90
    )
    assert resumed, f"the third job did not resume\n{diagnostics()}"
    time.sleep(3)  # a few more updates, so the final checkpoint must be a new one
    assert engine.run("scancel", "--batch", "--signal=USR1", str(job)).returncode == 0
    assert _gone(engine, job, cluster, 60), f"job {job} still queued after SIGUSR1\n{diagnostics()}"
    assert "SIGUSR1: the time limit is near" in (tmp_path / "job3.out").read_text(), diagnostics()
    assert cluster.wait_until(lambda: not cluster.leftover_processes(str(run_dir)), timeout_s=15), diagnostics()
    assert torch.load(run_dir / "checkpoints" / "latest.pt", weights_only=True)["updates"] > updates_solved
    assert "second SIGTERM" not in learner_log.read_text(), diagnostics()


def _outputs(tmp_path: Path) -> str:
    parts = []
    for path in sorted(tmp_path.glob("job*.out")):
        parts.append(f"--- {path.name} ---\n" + "\n".join(path.read_text(errors="replace").splitlines()[-20:]))
    return "\n".join(parts)
