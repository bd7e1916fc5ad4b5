"""Launch-to-solved on CartPole-v1: distdqn's local cluster vs. Stable-Baselines3 DQN, same run.

Both sides are timed the same way, from the moment this script starts the process to the first greedy
10-episode evaluation with mean >= 475, evaluation time included, and both report the last evaluation
of their run (distdqn stops after 3 evaluations >= 475 in a row; SB3 trains its full 50K steps). SB3
uses the rl-zoo CartPole hyperparameters and evaluates every 2,000 steps. The ratio of the medians is
the figure (BENCHMARKS.md: distdqn median <= 0.5x SB3's).

    python benchmarks/cartpole_solve.py --seeds 5              # both systems, seeds 0..4
    python benchmarks/cartpole_solve.py --systems distdqn      # distdqn only (no SB3 needed)

SB3 is an optional benchmark dependency: `pip install stable-baselines3==2.9.2 torch==2.13.0`. Other envs, the
same way: benchmarks/learning_suite.py.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import textwrap
from pathlib import Path
from statistics import median
from typing import Any

from harness.entry import base_parser, run_benchmark
from harness.report import print_table, write_result
from harness.solve_timing import SB3_EVAL, SOLVED, run_distdqn, run_timed

# rl-zoo's CartPole-v1 DQN hyperparameters; evaluation every 2,000 steps with 10 greedy episodes.
SB3_SCRIPT = textwrap.dedent(
    """
    import sys, time
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3 import DQN
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.evaluation import evaluate_policy

    seed = int(sys.argv[1])
    torch.set_num_threads(1)
    env = gym.make("CartPole-v1")
    eval_env = gym.make("CartPole-v1")
    model = DQN(
        "MlpPolicy", env, learning_rate=2.3e-3, batch_size=64, buffer_size=100_000, learning_starts=1000,
        gamma=0.99, target_update_interval=10, train_freq=256, gradient_steps=128,
        exploration_fraction=0.16, exploration_final_eps=0.04, policy_kwargs=dict(net_arch=[256, 256]),
        seed=seed, verbose=0,
    )

    class Eval(BaseCallback):
        def _on_step(self):
            if self.num_timesteps % 2000 == 0:
                mean, _ = evaluate_policy(self.model, eval_env, n_eval_episodes=10, deterministic=True)
                print(f"eval steps={self.num_timesteps} return {mean:.1f}", flush=True)
            return True

    model.learn(total_timesteps=50_000, callback=Eval())
    """
)


def run_sb3(seed: int, timeout_s: float, workdir: Path) -> dict[str, Any]:
    script = workdir / "sb3_cartpole.py"
    script.write_text(SB3_SCRIPT)
    result = run_timed([sys.executable, str(script), str(seed)], SB3_EVAL, timeout_s, workdir / f"sb3-s{seed}.log")
    result["solved"] = result["final_eval"] is not None and result["final_eval"] >= SOLVED
    return result


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 for each system")
    parser.add_argument("--systems", default="distdqn,sb3", help="comma-separated: distdqn, sb3")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds allowed per run")
    parser.add_argument("overrides", nargs="*", help="distdqn config overrides, e.g. learner.lr=5e-4")
    return parser.parse_args()


def run_seeds(args: argparse.Namespace, systems: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Every seed on every system, interleaved, so slow phases of a shared machine hit both systems alike."""
    seeds = [0] if args.quick else list(range(args.seeds))
    timeout = 60.0 if args.quick else args.timeout
    results: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    with tempfile.TemporaryDirectory(prefix="cartpole-solve-") as tmp:
        workdir = Path(tmp)
        for seed in seeds:
            for system in systems:
                if system == "distdqn":
                    result = run_distdqn(seed, timeout, workdir, args.overrides)
                else:
                    result = run_sb3(seed, timeout, workdir)
                result["seed"] = seed
                results[system].append(result)
                print(f"{system} seed {seed}: {result}", flush=True)
    return results


def summarize_and_print(results: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Per system: medians over seeds (only if every seed solved), printed, and their ratio."""
    rows = []
    summary: dict[str, Any] = {}
    for system, runs in results.items():
        times = [r["solve_s"] for r in runs if r["solve_s"] is not None]
        steps = [r["solve_env_steps"] for r in runs if r["solve_env_steps"] is not None]
        summary[system] = {
            "median_solve_s": median(times) if len(times) == len(runs) else None,
            "median_solve_env_steps": median(steps) if steps else None,
            "reached_475": f"{len(times)}/{len(runs)}",
            "final_eval_ge_475": f"{sum(1 for r in runs if (r['final_eval'] or 0) >= SOLVED)}/{len(runs)}",
            "runs": runs,
        }
        rows.append(
            [
                system,
                summary[system]["reached_475"],
                summary[system]["median_solve_s"],
                summary[system]["median_solve_env_steps"],
                summary[system]["final_eval_ge_475"],
                ", ".join(f"{t:.1f}" if t is not None else "-" for t in (r["solve_s"] for r in runs)),
            ]
        )
    print_table(
        "CartPole-v1: launch to first greedy 10-episode mean >= 475",
        ["system", "reached", "median s", "median steps", "final >= 475", "per seed (s)"],
        rows,
    )
    if "distdqn" in summary and "sb3" in summary:
        a, b = summary["distdqn"]["median_solve_s"], summary["sb3"]["median_solve_s"]
        summary["ratio_distdqn_over_sb3"] = round(a / b, 3) if a and b else None
        print(f"\nmedian time ratio distdqn / SB3: {summary['ratio_distdqn_over_sb3']} (goal <= 0.5)")
    return summary


def main() -> int:
    args = parse_args()
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    if "sb3" in systems:
        try:
            import stable_baselines3  # noqa: F401
        except ImportError:
            print("stable-baselines3 is not installed: pip install stable-baselines3==2.9.2 torch==2.13.0")
            return 2
    summary = summarize_and_print(run_seeds(args, systems))
    write_result("cartpole_solve", args.json, args, summary)
    return 0


if __name__ == "__main__":
    run_benchmark(main)
