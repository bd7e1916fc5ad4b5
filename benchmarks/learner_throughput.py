"""Learner updates/s fed over the wire by the replay server against the same updates fed from memory.

Why the ratio: the learner's update loop should never wait for data; what it loses to the network
(request round trips, decoding, copying into tensors, the replay server's sampling) shows up as the
gap between the two rates. Both use the real `Learner` (its `update`, target sync and weight
publication at the configured periods); the wire path uses the real `ReplayClient` against a real
replay server process, the memory path cycles through batches that the same client delivered earlier.
Windows of the two kinds alternate, so both medians come from the same minutes of the same machine.

    python benchmarks/learner_throughput.py [--net mlp|nature_cnn] [--batch-size 128] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq
from harness.entry import base_parser, run_benchmark
from harness.processes import MP, Children, free_port_base, shared_counters, shared_floats, wait_for, zmq_context
from harness.replay_server import ReplayProbe, start_replay_server
from harness.report import fmt, print_table, ratio, summarize, write_result
from harness.traffic import ATARI, CARTPOLE, Shape, pusher_main, run_config

NAME = "learner_throughput"
GOAL_RATIO = 0.9
MEMORY_BATCHES = 16
NETS = {
    # network overrides, observation shape, replay capacity, transitions to fill it with
    "mlp": ([], CARTPOLE, 100_000, 20_000),
    "nature_cnn": (["network.torso=nature_cnn", "network.hidden=[512]"], ATARI, 10_000, 4_000),
}


class Trainer:
    """The body of Learner.run's loop for one batch: update, then target sync and publish when due."""

    def __init__(self, learner: Any) -> None:
        self.learner = learner
        self.lc = learner.config.learner

    def step(self, batch: Any) -> None:
        learner = self.learner
        learner.update(batch)  # on CUDA it returns before the GPU is done: windows end with finish()
        learner.updates += 1
        if learner.updates % self.lc.target_update_period == 0:
            learner.target.load_state_dict(learner.online.state_dict())
        if learner.updates % self.lc.publish_period == 0:
            learner.publish()


def finish(trainer: Trainer) -> None:
    """Wait for the device to finish the updates queued so far, so a window counts only finished ones."""
    if trainer.learner.device.type == "cuda":
        import torch

        torch.cuda.synchronize(trainer.learner.device)


def wire_window(trainer: Trainer, duration: float) -> tuple[float, float]:
    """(updates/s, fraction of the window spent in get_batch: waiting, and on a CPU learner, whose client
    works inline, also receiving and decoding the batch)."""
    client = trainer.learner.replay
    updates, waited = 0, 0.0
    began = time.monotonic()
    while (now := time.monotonic()) - began < duration:
        batch = client.get_batch(timeout=0.05)
        waited += time.monotonic() - now
        if batch is not None:
            trainer.step(batch)
            updates += 1
    finish(trainer)
    span = time.monotonic() - began
    return updates / span, waited / span


def memory_window(trainer: Trainer, batches: list[Any], duration: float) -> float:
    updates = 0
    began = time.monotonic()
    while time.monotonic() - began < duration:
        trainer.step(batches[updates % len(batches)])
        updates += 1
    finish(trainer)
    return updates / (time.monotonic() - began)


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--net", choices=sorted(NETS), default="mlp", help="network (and observation size)")
    parser.add_argument("--batch-size", type=int, default=0, help="learner batch size (default: the preset's)")
    parser.add_argument("--device", default="auto", help="learner device: auto, cpu, cuda[:N]")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds per window (default 5; quick 1)")
    parser.add_argument("--repeats", type=int, default=0, help="wire/memory window pairs (default 3; quick 1)")
    parser.add_argument("--prefetch", type=int, default=0, help="learner.prefetch (default: the preset's)")
    parser.add_argument("--send-size", type=int, default=256, help="transitions per message while filling replay")
    args = parser.parse_args()
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    return args


@dataclasses.dataclass(frozen=True)
class Setup:
    """The run's config and ports, and how full replay must be before the windows start."""

    shape: Shape
    base: int
    overrides: list[str]
    config: Any
    fill: int
    batch_size: int
    prefetch: int


def set_up(args: argparse.Namespace) -> Setup:
    net_overrides, shape, capacity, fill = NETS[args.net]
    if args.quick:
        fill = min(fill, 2_000)
    base = free_port_base()
    overrides = [
        *net_overrides,
        "replay.samples_per_insert=0",
        f"replay.capacity={capacity}",
        f"learner.device={args.device}",
        f"actor.send_size={args.send_size}",
    ]
    if args.batch_size:
        overrides.append(f"learner.batch_size={args.batch_size}")
    if args.prefetch:
        overrides.append(f"learner.prefetch={args.prefetch}")
    batch_size = run_config(base, overrides).learner.batch_size
    prefetch = run_config(base, overrides).learner.prefetch
    overrides.append(f"replay.min_size={max(batch_size, min(fill, 1_000))}")
    config = run_config(base, overrides)
    return Setup(shape, base, overrides, config, fill, batch_size, prefetch)


def fill_replay(children: Children, ctx: zmq.Context, args: argparse.Namespace, setup: Setup) -> None:
    """Push `setup.fill` transitions into the replay server with one pusher, and wait until it holds them."""
    probe = ReplayProbe(ctx, setup.config.net.sample_port)
    rate, sent, fill_stop = shared_floats(1), shared_counters(1), MP.Event()
    net = setup.config.net
    filler_args = (0, net.ingest_port, setup.shape, args.send_size, net.send_hwm, rate, sent, fill_stop, setup.fill)
    filler = children.spawn("filler", pusher_main, *filler_args, stop=fill_stop)
    fill = setup.fill
    wait_for(lambda: probe.stats()["size"] >= fill, 120, f"replay to hold {fill} transitions", children)
    children.stop([filler])
    probe.close()


def memory_batches(learner: Any) -> list[Any]:
    """MEMORY_BATCHES batches as the client delivered them, kept for the memory windows."""
    batches = []
    for _ in range(MEMORY_BATCHES):
        batch = learner.replay.get_batch(timeout=30)
        if batch is None:
            raise TimeoutError("no batch from the replay server within 30 s")
        # A batch that is a shared-memory slot (CPU) is copied, as replay
        # refills the slot; others are already the client's own (pinned, on CUDA) and kept as they are.
        if batch.slot >= 0:
            batch = dataclasses.replace(batch, obs=batch.obs.clone(), next_obs=batch.next_obs.clone(), slot=-1)
        batches.append(batch)
    return batches


@dataclasses.dataclass
class Samples:
    """One entry per repeat: wire updates/s, the fraction of it in get_batch, memory updates/s."""

    wire: list[float] = dataclasses.field(default_factory=list)
    wait: list[float] = dataclasses.field(default_factory=list)
    memory: list[float] = dataclasses.field(default_factory=list)


def alternate_windows(learner: Any, args: argparse.Namespace, children: Children) -> tuple[Samples, str]:
    """The learner against the filled replay server: (samples, the device it ran on). Closes the learner."""
    trainer = Trainer(learner)
    learner.control.start()
    learner.replay.start()
    samples = Samples()
    try:
        batches = memory_batches(learner)
        memory_window(trainer, batches, min(1.0, args.duration))  # warm up allocator and kernels
        for _ in range(args.repeats):
            updates, waited = wire_window(trainer, args.duration)
            samples.wire.append(updates)
            samples.wait.append(waited)
            samples.memory.append(memory_window(trainer, batches, args.duration))
            children.check_alive()
        device = str(learner.device)
    finally:
        learner.replay.close()
        learner.control.close()
        learner.ctx.destroy(linger=0)
    return samples, device


def measure(args: argparse.Namespace, setup: Setup) -> tuple[Samples, str]:
    """The measured run: fill replay, then alternate wire and memory windows."""
    from learner.learner import Learner  # torch: imported before any child starts

    with (
        tempfile.TemporaryDirectory(prefix="distdqn-bench-") as tmp,
        Children() as children,
        zmq_context() as ctx,
    ):
        server = start_replay_server(children, setup.base, setup.overrides, setup.shape)
        fill_replay(children, ctx, args, setup)
        learner = Learner(setup.config, setup.shape.env_spec(), Path(tmp) / "run")
        samples, device = alternate_windows(learner, args, children)
        children.stop([server])
    return samples, device


def results_of(args: argparse.Namespace, setup: Setup, samples: Samples, device: str) -> dict[str, Any]:
    wire, memory = summarize(samples.wire), summarize(samples.memory)
    return {
        "net": args.net,
        "device": device,
        "batch_size": setup.batch_size,
        "prefetch": setup.prefetch,
        "replay_size": setup.fill,
        "wire_updates_per_s": wire,
        "memory_updates_per_s": memory,
        "wire_wait_fraction": summarize(samples.wait),
        "ratio": ratio(wire["median"], memory["median"]),
        "ratios_per_repeat": [w / m for w, m in zip(samples.wire, samples.memory, strict=True)],
        "goal_ratio": GOAL_RATIO,
    }


def print_report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    wire, memory, wait = results["wire_updates_per_s"], results["memory_updates_per_s"], results["wire_wait_fraction"]
    batch_size, device = results["batch_size"], results["device"]
    print_table(
        f"{NAME} ({args.net} on {device}, batch {batch_size}, medians of {args.repeats} x {args.duration:g} s)",
        ["feed", "updates/s", "min", "max", "transitions/s", "in get_batch %"],
        [
            [
                "over the wire (ReplayClient)",
                wire["median"],
                wire["min"],
                wire["max"],
                wire["median"] * batch_size,
                100 * wait["median"],
            ],
            [
                "from memory (same batches)",
                memory["median"],
                memory["min"],
                memory["max"],
                memory["median"] * batch_size,
                None,
            ],
        ],
    )
    print(f"wire / memory: {fmt(results['ratio'])} (goal >= {GOAL_RATIO:g})")


def main() -> int:
    args = parse_args()
    setup = set_up(args)
    print(
        f"{NAME}: {args.net}, batch {setup.batch_size}, prefetch {setup.prefetch}, replay holding {setup.fill:,} "
        f"{setup.shape.name} transitions, "
        f"{args.repeats} x ({args.duration:g} s wire + {args.duration:g} s memory)"
    )
    samples, device = measure(args, setup)
    results = results_of(args, setup, samples, device)
    print_report(args, results)
    write_result(NAME, args.json, args, results)
    return 0


if __name__ == "__main__":
    run_benchmark(main)
