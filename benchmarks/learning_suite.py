"""Launch-to-threshold on the standard DQN tasks: distdqn's presets vs. Stable-Baselines3 DQN, same run.

For each env, each seed runs distdqn's preset (a local cluster, `scripts/launch_cluster.sh`) and then the
peer, one after the other, so slow phases of a shared machine hit both alike. Both are timed as
benchmarks/cartpole_solve.py times them (harness/solve_timing.py does it): from the start of the process to the first
greedy 10-episode evaluation whose mean reaches the env's threshold, evaluation time included. The peer
is SB3 2.9.2 DQN with the rl-zoo hyperparameters (benchmarks/sb3_dqn.py), evaluated every 2,000 steps;
for MinAtar it is SB3 DQN with MinAtar's reference network and settings, for 500K frames, evaluated
every 10,000, and its last evaluation is the return the reference reaches at 500K frames.

    python benchmarks/learning_suite.py                                  # every env, 5 random seeds
    python benchmarks/learning_suite.py --envs Acrobot-v1 --seed-list 3,17 --systems distdqn
    python benchmarks/learning_suite.py --envs CartPole-v1 --seeds 1 --timeout 60 --sb3-timesteps 4000

Seeds are drawn at random and printed unless given, so presets are judged on seeds nobody tuned them on.
Needs the bench extra for the peer: `pip install -e '.[bench]' torch==2.13.0`.
"""

from __future__ import annotations

import json
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

from harness import BENCH_DIR
from harness.entry import base_parser, run_benchmark
from harness.report import print_table, ratio, write_result
from harness.solve_timing import SB3_EVAL, run_distdqn, run_timed

SB3_RUNNER = BENCH_DIR / "sb3_dqn.py"
ZOO_MLP = {"policy_kwargs": {"net_arch": [256, 256]}}
# MinAtar's examples/dqn.py: batch 32, 100K replay from 5,000 random frames, a target copied every 1,000
# updates, one update a frame, epsilon 1 -> 0.1 over 100K frames, gamma 0.99, no gradient clipping.
MINATAR_REFERENCE = {
    "learning_rate": 2.5e-4,
    "batch_size": 32,
    "buffer_size": 100_000,
    "learning_starts": 5_000,
    "gamma": 0.99,
    "target_update_interval": 1_000,
    "train_freq": 1,
    "gradient_steps": 1,
    "exploration_initial_eps": 1.0,
    "exploration_fraction": 0.21,  # of 500K frames: the 5K random ones, then 100K of annealing
    "exploration_final_eps": 0.1,
    "max_grad_norm": 1e6,
}
MINATAR_FRAMES = 500_000


@dataclass(frozen=True)
class Task:
    preset: str
    threshold: float | None  # None: the preset's stop.eval_return
    sb3: dict[str, Any]
    timesteps: int
    eval_every: int = 2_000
    minatar: bool = field(default=False)


TASKS = {
    # rl-zoo hyperparams/dqn.yml (the version benchmarks/cartpole_solve.py uses for CartPole-v1)
    "CartPole-v1": Task(
        "cartpole",
        475.0,
        {
            **ZOO_MLP,
            "learning_rate": 2.3e-3,
            "batch_size": 64,
            "buffer_size": 100_000,
            "learning_starts": 1000,
            "gamma": 0.99,
            "target_update_interval": 10,
            "train_freq": 256,
            "gradient_steps": 128,
            "exploration_fraction": 0.16,
            "exploration_final_eps": 0.04,
        },
        50_000,
    ),
    "Acrobot-v1": Task(
        "acrobot",
        -100.0,
        {
            **ZOO_MLP,
            "learning_rate": 6.3e-4,
            "batch_size": 128,
            "buffer_size": 50_000,
            "learning_starts": 0,
            "gamma": 0.99,
            "target_update_interval": 250,
            "train_freq": 4,
            "gradient_steps": -1,
            "exploration_fraction": 0.12,
            "exploration_final_eps": 0.1,
        },
        100_000,
    ),
    "MountainCar-v0": Task(
        "mountaincar",
        -110.0,
        {
            **ZOO_MLP,
            "learning_rate": 4e-3,
            "batch_size": 128,
            "buffer_size": 10_000,
            "learning_starts": 1000,
            "gamma": 0.98,
            "target_update_interval": 600,
            "train_freq": 16,
            "gradient_steps": 8,
            "exploration_fraction": 0.2,
            "exploration_final_eps": 0.07,
        },
        120_000,
    ),
    "LunarLander-v3": Task(  # the zoo's LunarLander-v2 settings
        "lunarlander",
        200.0,
        {
            **ZOO_MLP,
            "learning_rate": 6.3e-4,
            "batch_size": 128,
            "buffer_size": 50_000,
            "learning_starts": 0,
            "gamma": 0.99,
            "target_update_interval": 250,
            "train_freq": 4,
            "gradient_steps": -1,
            "exploration_fraction": 0.12,
            "exploration_final_eps": 0.1,
        },
        100_000,
    ),
    **{
        f"MinAtar/{game}-v1": Task(f"minatar-{key}", None, MINATAR_REFERENCE, MINATAR_FRAMES, 10_000, True)
        for game, key in [
            ("Breakout", "breakout"),
            ("SpaceInvaders", "space-invaders"),
            ("Asterix", "asterix"),
            ("Freeway", "freeway"),
            ("Seaquest", "seaquest"),
        ]
    },
}
DEFAULT_ENVS = "CartPole-v1,Acrobot-v1,MountainCar-v0,LunarLander-v3,MinAtar/Breakout-v1,MinAtar/SpaceInvaders-v1"


def threshold_of(task: Task) -> float:
    if task.threshold is not None:
        return task.threshold
    from common.config import load_config

    return load_config(task.preset).stop.eval_return


def run_peer(env_id: str, task: Task, seed: int, timeout_s: float, workdir: Path, timesteps: int) -> dict[str, Any]:
    cmd = [sys.executable, str(SB3_RUNNER), "--env", env_id, "--seed", str(seed), "--timesteps", str(timesteps)]
    cmd += ["--eval-every", str(min(task.eval_every, timesteps)), "--kwargs", json.dumps(task.sb3)]
    if task.minatar:
        cmd += ["--minatar", "--rmsprop"]
    log = workdir / f"sb3-{env_id.replace('/', '_')}-s{seed}.log"
    result = run_timed(cmd, SB3_EVAL, timeout_s, log, threshold_of(task))
    result["solved"] = result["solve_s"] is not None
    return result


def summarize_env(env_id: str, threshold: float, results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per-seed times, the median of each system (only if every seed reached the threshold) and their ratio."""
    out: dict[str, Any] = {"threshold": threshold}
    rows = []
    for system, runs in results.items():
        times = [r["solve_s"] for r in runs]
        reached = [t for t in times if t is not None]
        last_ok = sum(1 for r in runs if r["final_eval"] is not None and r["final_eval"] >= threshold)
        out[system] = {
            "median_solve_s": median(reached) if reached and len(reached) == len(runs) else None,
            "reached": f"{len(reached)}/{len(runs)}",
            "last_eval_ge_threshold": f"{last_ok}/{len(runs)}",
            "runs": runs,
        }
        per_seed = ", ".join(
            f"{r['seed']}: " + (f"{r['solve_s']:.1f}" if r["solve_s"] is not None else "-") for r in runs
        )
        rows.append(
            [
                system,
                out[system]["reached"],
                out[system]["median_solve_s"],
                out[system]["last_eval_ge_threshold"],
                per_seed,
            ]
        )
    print_table(
        f"{env_id}: launch to the first greedy 10-episode mean >= {threshold:g}",
        ["system", "reached", "median s", "last eval ok", "per seed (s)"],
        rows,
    )
    if "distdqn" in results and "sb3" in results:
        out["ratio_distdqn_over_sb3"] = ratio(out["distdqn"]["median_solve_s"], out["sb3"]["median_solve_s"])
        print(f"median time ratio distdqn / SB3: {out['ratio_distdqn_over_sb3']}")
        finals = [r["final_eval"] for r in results["sb3"] if r["final_eval"] is not None]
        if TASKS[env_id].minatar and finals:
            out["reference_return_at_end"] = median(finals)
            print(f"the reference's last evaluation (median over seeds): {median(finals):g}; threshold {threshold:g}")
    return out


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--envs", default=DEFAULT_ENVS, help=f"comma-separated, from: {', '.join(TASKS)}")
    parser.add_argument("--seeds", type=int, default=5, help="seeds drawn at random per env")
    parser.add_argument("--seed-list", default="", help="comma-separated seeds instead of random ones")
    parser.add_argument("--systems", default="distdqn,sb3", help="comma-separated: distdqn, sb3")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds allowed per run")
    parser.add_argument("--sb3-timesteps", type=int, default=0, help="cap on the peer's steps (0: the task's own)")
    parser.add_argument("overrides", nargs="*", help="distdqn config overrides for every preset")
    args = parser.parse_args()
    envs = [e.strip() for e in args.envs.split(",") if e.strip()]
    unknown = [e for e in envs if e not in TASKS]
    if unknown:
        print(f"error: unknown env {unknown[0]!r} (known: {', '.join(TASKS)})", file=sys.stderr)
        return 2
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if "sb3" in systems:
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            print("error: stable-baselines3 is not installed: pip install -e '.[bench]' torch==2.13.0", file=sys.stderr)
            return 2
    if args.seed_list:
        seeds = [int(s) for s in args.seed_list.split(",")]
    else:
        seeds = random.SystemRandom().sample(range(1000, 100_000), 1 if args.quick else args.seeds)
    print(f"seeds: {','.join(map(str, seeds))} (repeat with --seed-list {','.join(map(str, seeds))})", flush=True)
    timeout = 60.0 if args.quick else args.timeout
    summary: dict[str, Any] = {"seeds": seeds}
    with tempfile.TemporaryDirectory(prefix="learning-suite-") as tmp:
        workdir = Path(tmp)
        for env_id in envs:
            task = TASKS[env_id]
            threshold = threshold_of(task)
            timesteps = min(task.timesteps, args.sb3_timesteps) if args.sb3_timesteps else task.timesteps
            results: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
            for seed in seeds:  # interleaved: each seed runs both systems back to back
                for system in systems:
                    if system == "distdqn":
                        extra = [f"stop.eval_return={threshold}", *args.overrides]
                        result = run_distdqn(seed, timeout, workdir, extra, task.preset, threshold)
                    else:
                        result = run_peer(env_id, task, seed, timeout, workdir, timesteps)
                    result["seed"] = seed
                    results[system].append(result)
                    print(f"{env_id} {system} seed {seed}: {result}", flush=True)
            summary[env_id] = summarize_env(env_id, threshold, results)
    write_result("learning_suite", args.json, args, summary)
    return 0


if __name__ == "__main__":
    run_benchmark(main)
