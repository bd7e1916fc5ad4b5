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

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.entry import base_parser, run_benchmark
from harness.processes import MP, Children, free_port_base, shared_counters, shared_floats, wait_for, zmq_context
from harness.replay_server import ReplayProbe, start_replay_server
from harness.report import fmt, print_table, ratio, summarize, write_result
from harness.traffic import ATARI, CARTPOLE, pusher_main, run_config

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


def main() -> int:
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

    from learner.learner import Learner

    print(
        f"{NAME}: {args.net}, batch {batch_size}, prefetch {prefetch}, replay holding {fill:,} {shape.name} "
        "transitions, "
        f"{args.repeats} x ({args.duration:g} s wire + {args.duration:g} s memory)"
    )
    wires: list[float] = []
    waits: list[float] = []
    memories: list[float] = []
    with (
        tempfile.TemporaryDirectory(prefix="distdqn-bench-") as tmp,
        Children() as children,
        zmq_context() as ctx,
    ):
        server = start_replay_server(children, base, overrides, shape)
        probe = ReplayProbe(ctx, config.net.sample_port)
        rate, sent, fill_stop = shared_floats(1), shared_counters(1), MP.Event()
        filler = children.spawn(
            "filler",
            pusher_main,
            0,
            config.net.ingest_port,
            shape,
            args.send_size,
            config.net.send_hwm,
            rate,
            sent,
            fill_stop,
            fill,
            stop=fill_stop,
        )
        wait_for(lambda: probe.stats()["size"] >= fill, 120, f"replay to hold {fill} transitions", children)
        children.stop([filler])
        probe.close()

        learner = Learner(config, shape.env_spec(), Path(tmp) / "run")
        trainer = Trainer(learner)
        learner.control.start()
        learner.replay.start()
        try:
            batches = []
            for _ in range(MEMORY_BATCHES):
                batch = learner.replay.get_batch(timeout=30)
                if batch is None:
                    raise TimeoutError("no batch from the replay server within 30 s")
                # Kept for the memory windows. A batch that is a shared-memory slot (CPU) is copied, as replay
                # refills the slot; others are already the client's own (pinned, on CUDA) and kept as they are.
                if batch.slot >= 0:
                    batch = dataclasses.replace(batch, obs=batch.obs.clone(), next_obs=batch.next_obs.clone(), slot=-1)
                batches.append(batch)
            memory_window(trainer, batches, min(1.0, args.duration))  # warm up allocator and kernels
            for _ in range(args.repeats):
                updates, waited = wire_window(trainer, args.duration)
                wires.append(updates)
                waits.append(waited)
                memories.append(memory_window(trainer, batches, args.duration))
                children.check_alive()
            device = str(learner.device)
        finally:
            learner.replay.close()
            learner.control.close()
            learner.ctx.destroy(linger=0)
        children.stop([server])

    wire, memory, wait = summarize(wires), summarize(memories), summarize(waits)
    results = {
        "net": args.net,
        "device": device,
        "batch_size": batch_size,
        "prefetch": prefetch,
        "replay_size": fill,
        "wire_updates_per_s": wire,
        "memory_updates_per_s": memory,
        "wire_wait_fraction": wait,
        "ratio": ratio(wire["median"], memory["median"]),
        "ratios_per_repeat": [w / m for w, m in zip(wires, memories, strict=True)],
        "goal_ratio": GOAL_RATIO,
    }
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
    write_result(NAME, args.json, args, results)
    return 0


if __name__ == "__main__":
    run_benchmark(main)
