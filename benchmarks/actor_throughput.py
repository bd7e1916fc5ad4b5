"""One actor process's env-steps/s against the raw stepping rate of the same vector env, in one run.

Why the ratio: an actor's job is to step environments; everything else it does per step (the Q-network
forward pass, epsilon-greedy, n-step assembly, initial priorities, encoding and pushing transitions,
draining weights) is overhead, and the ratio says how much of the environments' own speed survives it,
whatever the machine. The actor is the real `python -m actor`, pushing to a real `python -m replay`
(rate limiting off, so it never waits); a small stand-in answers its `hello` and `get_weights` and reads
the `actor_stats` it reports. Raw and actor windows alternate (the actor is paused with SIGSTOP during
raw windows), so both medians come from the same minutes of the same machine.

    python benchmarks/actor_throughput.py [--num-envs 16] [--env CartPole-v1] [--quick] [--profile]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import zmq
from harness import RESULTS_DIR
from harness.entry import base_parser, run_benchmark
from harness.processes import Children, cpu_seconds, free_port_base, wait_for, zmq_context
from harness.replay_server import ReplayProbe
from harness.report import fmt, print_profile, print_table, ratio, summarize, write_result
from harness.traffic import run_config

NAME = "actor_throughput"
GOAL_RATIO = 0.5
JOIN_TIMEOUT_S = 120.0
STATS_INTERVAL_S = 0.25


class LearnerStandIn:
    """What an actor needs from a learner, and no training: the config, weights, and a reader for its stats."""

    def __init__(self, ctx: zmq.Context, config: Any, weights: dict[str, np.ndarray]) -> None:
        from common.sockets import bind, make_socket
        from common.wire import Encoder

        self.config = config
        self.weights = weights
        max_bytes = config.net.max_message_mb << 20
        self.router = make_socket(ctx, zmq.ROUTER, hwm=1024, max_message_bytes=max_bytes)
        self.pub = make_socket(ctx, zmq.PUB, hwm=4)
        bind(self.router, "127.0.0.1", config.net.learner_port, "benchmark learner control")
        bind(self.pub, "127.0.0.1", config.net.weights_port, "benchmark weight broadcast")
        self.encode = Encoder("learner")
        self.stats: list[tuple[float, dict[str, Any]]] = []
        self.rejected = 0

    def serve(self, seconds: float) -> None:
        from common.wire import DecodeError, decode

        until = time.monotonic() + seconds
        while (left := until - time.monotonic()) > 0:
            if not self.router.poll(int(left * 1000) + 1):
                continue
            for _ in range(128):
                try:
                    frames = self.router.recv_multipart(zmq.NOBLOCK, copy=False)
                except zmq.Again:
                    break
                received = time.monotonic()
                try:
                    msg = decode(frames[1:], expect=("hello", "get_weights", "actor_stats", "eval_result"))
                except DecodeError:
                    self.rejected += 1
                    continue
                identity = frames[0].bytes
                if msg.kind == "hello":
                    welcome = {"config": self.config.to_dict(), "actor_index": 0, "run_id": "benchmark"}
                    self.router.send_multipart([identity, *self.encode("welcome", welcome)])
                elif msg.kind == "get_weights":
                    reply = self.encode("weights", {"version": 1}, self.weights)
                    self.router.send_multipart([identity, *reply], copy=False)
                elif msg.kind == "actor_stats":
                    self.stats.append((received, dict(msg.meta)))

    def stop_actors(self) -> None:
        self.pub.send_multipart(self.encode("stop", {"reason": "benchmark over"}))

    def close(self) -> None:
        self.router.close(linger=0)
        self.pub.close(linger=0)


def raw_window(
    env: Any, rng: np.random.Generator, num_envs: int, num_actions: int, duration: float
) -> tuple[float, float]:
    """(env-steps/s of the vector env alone with uniformly random actions, fraction of a CPU it got)."""
    steps = 0
    began, cpu0 = time.monotonic(), time.process_time()
    while time.monotonic() - began < duration:
        for _ in range(32):
            env.step(rng.integers(0, num_actions, size=num_envs))
        steps += 32
    span = time.monotonic() - began
    return steps * num_envs / span, (time.process_time() - cpu0) / span


def actor_window(standin: LearnerStandIn, pid: int, settle_s: float, duration: float) -> tuple[float, float, float]:
    """(env-steps/s from the actor's cumulative counter over the window, median of its own steps_per_s,
    fraction of a CPU the actor process got)."""
    os.kill(pid, signal.SIGCONT)
    standin.serve(settle_s)  # the first report after a pause covers the pause: skip it
    mark = len(standin.stats)
    began, cpu0 = time.monotonic(), cpu_seconds(pid)
    standin.serve(duration)
    cpu = (cpu_seconds(pid) - cpu0) / (time.monotonic() - began)
    os.kill(pid, signal.SIGSTOP)
    window = standin.stats[mark:]
    if len(window) < 2:
        raise RuntimeError(f"only {len(window)} actor_stats reports in a {duration:g} s window; is the actor alive?")
    (t0, first), (t1, last) = window[0], window[-1]
    reported = [m["steps_per_s"] for _, m in window if m.get("steps_per_s")]
    rate = (last["env_steps"] - first["env_steps"]) / (t1 - t0)
    return rate, float(np.median(reported)) if reported else 0.0, cpu


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--env", default="CartPole-v1", help="gymnasium id")
    parser.add_argument("--num-envs", type=int, default=16, help="environments in the actor's vector env")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds per window (default 5; quick 1.5)")
    parser.add_argument("--repeats", type=int, default=0, help="raw/actor window pairs (default 3; quick 1)")
    parser.add_argument("--profile", action="store_true", help="run the actor under cProfile and print the top")
    args = parser.parse_args()
    args.duration = args.duration or (1.5 if args.quick else 5.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


@dataclasses.dataclass
class Setup:
    """What both kinds of window use: the actor's config, the learner's weights, and the raw side's env."""

    base: int
    overrides: list[str]
    config: Any
    num_actions: int
    weights: dict[str, np.ndarray]
    env: Any


def set_up(args: argparse.Namespace) -> Setup:
    base = free_port_base()
    overrides = [
        f"env.id={args.env}",
        f"env.num_envs={args.num_envs}",
        "replay.samples_per_insert=0",
        f"actor.stats_interval_s={STATS_INTERVAL_S}",
    ]
    config = run_config(base, overrides)
    print(
        f"{NAME}: {args.env} x {args.num_envs} envs, "
        f"{args.repeats} x ({args.duration:g} s raw + {args.duration:g} s actor)"
    )

    import torch

    from common.envs import env_spec, make_vector_env
    from common.networks import QNetwork, weights_to_numpy

    spec = env_spec(config.env)
    torch.manual_seed(0)
    weights = weights_to_numpy(QNetwork(spec.obs_shape, spec.num_actions, config.network))
    env = make_vector_env(config.env, args.num_envs)
    env.reset(seed=0)
    return Setup(base, overrides, config, spec.num_actions, weights, env)


@dataclasses.dataclass
class Samples:
    """One entry per repeat, for each kind of window."""

    raw: list[float] = dataclasses.field(default_factory=list)
    actor: list[float] = dataclasses.field(default_factory=list)
    reported: list[float] = dataclasses.field(default_factory=list)
    raw_cpu: list[float] = dataclasses.field(default_factory=list)
    actor_cpu: list[float] = dataclasses.field(default_factory=list)


def start_actor(children: Children, standin: LearnerStandIn, setup: Setup, profile_path: str) -> Any:
    """Replay and the actor as their own commands; the actor is paused (SIGSTOP) once it reports."""
    children.module("replay", "replay", ["--port-base", str(setup.base), *setup.overrides])
    actor_args = ["--learner", f"127.0.0.1:{setup.base}", "--actor-index", "0"]
    actor = children.module("actor", "actor", actor_args, profile_path=profile_path, profile_start="sigusr1")

    def first_report() -> bool:
        standin.serve(0.1)
        return bool(standin.stats)

    wait_for(first_report, JOIN_TIMEOUT_S, "the actor's first actor_stats", children)
    standin.serve(0.5)
    if profile_path:
        os.kill(actor.pid, signal.SIGUSR1)  # profile the acting loop, not start-up
    os.kill(actor.pid, signal.SIGSTOP)
    return actor


def alternate_windows(
    args: argparse.Namespace, setup: Setup, standin: LearnerStandIn, actor: Any, children: Children
) -> Samples:
    rng = np.random.default_rng(0)
    samples = Samples()
    for _ in range(args.repeats):
        rate, cpu = raw_window(setup.env, rng, args.num_envs, setup.num_actions, args.duration)
        samples.raw.append(rate)
        samples.raw_cpu.append(cpu)
        rate, own, cpu = actor_window(standin, actor.pid, 2 * STATS_INTERVAL_S + 0.1, args.duration)
        samples.actor.append(rate)
        samples.reported.append(own)
        samples.actor_cpu.append(cpu)
        children.check_alive()
    return samples


def stop_actor(standin: LearnerStandIn, actor: Any) -> None:
    """Ask the (running) actor to stop as a learner would, and give it a while to do so."""
    for _ in range(3):  # PUB drops for a subscriber mid-reconnect: say it more than once
        standin.stop_actors()
        standin.serve(0.2)
    with contextlib.suppress(subprocess.TimeoutExpired):  # still running: Children.close kills it
        actor.wait(timeout=15)


def measure(args: argparse.Namespace, setup: Setup) -> tuple[Samples, dict[str, Any], list[dict[str, Any]] | None]:
    """The measured run: (samples, the replay server's final stats, the actor's profile rows if profiled)."""
    profile_path = ""
    with tempfile.TemporaryDirectory(prefix="distdqn-bench-") as tmp, Children(Path(tmp)) as children:
        if args.profile:
            RESULTS_DIR.mkdir(parents=True, exist_ok=True)
            profile_path = str(RESULTS_DIR / f"{NAME}-actor.prof")  # kept for pstats / snakeviz
        with zmq_context() as ctx:
            standin = LearnerStandIn(ctx, setup.config, setup.weights)
            probe = ReplayProbe(ctx, setup.config.net.sample_port)
            try:
                actor = start_actor(children, standin, setup, profile_path)
                samples = alternate_windows(args, setup, standin, actor, children)
                os.kill(actor.pid, signal.SIGCONT)
                replay_stats = probe.stats()
                stop_actor(standin, actor)
            finally:
                probe.close()
                standin.close()
        children.close()
        profile_rows = print_profile(profile_path, "actor process") if profile_path else None
    return samples, replay_stats, profile_rows


def results_of(
    args: argparse.Namespace, samples: Samples, replay_stats: dict[str, Any], profile_rows: list[dict[str, Any]] | None
) -> dict[str, Any]:
    raw_rate, actor_rate = summarize(samples.raw), summarize(samples.actor)
    results: dict[str, Any] = {
        "env": args.env,
        "num_envs": args.num_envs,
        "raw_env_steps_per_s": raw_rate,
        "actor_env_steps_per_s": actor_rate,
        "actor_reported_steps_per_s": summarize(samples.reported),
        "raw_cpu_fraction": summarize(samples.raw_cpu),
        "actor_cpu_fraction": summarize(samples.actor_cpu),
        "ratio": ratio(actor_rate["median"], raw_rate["median"]),
        "ratios_per_repeat": [a / r for a, r in zip(actor_rate["samples"], raw_rate["samples"], strict=True)],
        "replay_inserted": replay_stats.get("inserted"),
        "replay_rejected": replay_stats.get("rejected"),
        "goal_ratio": GOAL_RATIO,
    }
    if profile_rows is not None:
        results["profile_actor"] = profile_rows
    return results


def print_report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    raw_rate, actor_rate = results["raw_env_steps_per_s"], results["actor_env_steps_per_s"]
    reported_rate = results["actor_reported_steps_per_s"]
    print_table(
        f"{NAME} ({args.env} x {args.num_envs}, medians of {args.repeats} x {args.duration:g} s)",
        ["measurement", "env-steps/s", "min", "max", "CPU used"],
        [
            [
                "raw vector env, random actions",
                raw_rate["median"],
                raw_rate["min"],
                raw_rate["max"],
                results["raw_cpu_fraction"]["median"],
            ],
            [
                "real actor process (actor_stats)",
                actor_rate["median"],
                actor_rate["min"],
                actor_rate["max"],
                results["actor_cpu_fraction"]["median"],
            ],
            [
                "  its own steps_per_s reports",
                reported_rate["median"],
                reported_rate["min"],
                reported_rate["max"],
                None,
            ],
        ],
    )
    print(
        f"actor / raw: {fmt(results['ratio'])} (goal >= {GOAL_RATIO:g})   "
        f"replay inserted {results['replay_inserted']}, rejected {results['replay_rejected'] or 'none'}"
    )


def main() -> int:
    args = parse_args()
    setup = set_up(args)
    samples, replay_stats, profile_rows = measure(args, setup)
    setup.env.close()
    results = results_of(args, samples, replay_stats, profile_rows)
    print_report(args, results)
    write_result(NAME, args.json, args, results)
    return 0 if results["replay_inserted"] and not results["replay_rejected"] else 1


if __name__ == "__main__":
    run_benchmark(main)
