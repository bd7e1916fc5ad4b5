"""Shared plumbing of the benchmark scripts, one module per concern.

Why a package of its own name: the scripts run as files (`python benchmarks/NAME.py`), which puts
`benchmarks/` first on `sys.path`; a module there named like a project package (`common`) would shadow
it. `harness` shadows nothing, so the scripts import it and the installed project packages
(`scripts/setup_env.sh` installs them) without touching `sys.path`.

- `processes`: child processes that always end, waiting, shared counters, ports.
- `traffic`: transition shapes, synthetic ingest messages and the pusher that sends them.
- `replay_server`: the real replay server in a child process, and a probe for its counters.
- `raw_reference`: raw PUSH/PULL with the same messages, the physical reference for replay ingest.
- `report`: statistics, tables, profiles and the JSON result file.
- `entry`: the common command-line flags and the signal-safe way to run a benchmark's `main`.
- `solve_timing`: launch-to-threshold timing of a learning run (distdqn's cluster or a peer).
- `actor_host`, `stamped_learner`, `replay_watch`, `system_probes`, `lan`, `frames_env`, `scale_run`,
  `scale_figures`: the processes, probes and figures of `scale_actors.py` (see each module).

Every result carries medians, the machine it ran on and how loaded that machine was, the same way,
so that numbers are only ever compared with a peer measured in the same run.
"""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = REPO_ROOT / "benchmarks"
RESULTS_DIR = BENCH_DIR / "results"
