"""Replay server throughput over real sockets: ingest from K pushing processes while a learner samples.

Why this shape: in Ape-X the replay server is the one process every transition passes through twice
(in from the actors, out to the learner), so its ingest rate and the batches it serves while ingesting
bound the whole system. Pushers cycle through prebuilt messages (their own cost stays out
of the number); a learner process uses the real `ReplayClient` at batch 512 and sends priorities back.
The physical reference, raw PUSH/PULL with the same message size, is measured in the same run, so the
result is a ratio that means something on any machine.

    python benchmarks/replay_throughput.py [--size cartpole|atari] [--pushers 4] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from typing import Any

import numpy as np
import zmq
from harness import RESULTS_DIR
from harness.entry import base_parser, run_benchmark
from harness.processes import (
    MP,
    READY_TIMEOUT_S,
    Children,
    Event,
    free_port_base,
    shared_counters,
    shared_floats,
    wait_for,
    zmq_context,
)
from harness.raw_reference import SETTLE_S, measure_raw
from harness.replay_server import ReplayProbe, start_replay_server
from harness.report import fmt, print_profile, print_table, ratio, summarize, write_result
from harness.traffic import SHAPES, Shape, frames_bytes, pusher_main, run_config, transitions_frames

NAME = "replay_throughput"
DEFAULT_SEND_SIZE = {"cartpole": 1024, "atari": 64}
DEFAULT_CAPACITY = {"cartpole": 1_000_000, "atari": 50_000}
GOAL_INGEST = {"cartpole": 1_000_000, "atari": 50_000}
GOAL_BATCHES_AT_RATE = 40.0


def sampler_main(port_base: int, overrides: list[str], shape: Shape, counters: Any, stop: Event) -> None:
    """A learner stand-in built on the real ReplayClient: take batches, send random priorities back.

    counters[0]: batches taken; counters[1]: nanoseconds spent waiting for one (this stand-in computes
    nothing, so it always waits; the number is kept only to spot a stalled client); counters[2]: batches
    that came through the shared-memory batch file."""
    from learner.replay_client import ReplayClient

    config = run_config(port_base, overrides)
    ctx = zmq.Context()
    client = ReplayClient(config, "127.0.0.1", pin_memory=False, ctx=ctx, spec=shape.env_spec())
    client.start()
    rng = np.random.default_rng(0)
    try:
        while not stop.is_set():
            began = time.monotonic_ns()
            batch = client.get_batch(timeout=0.1)
            counters[1] += time.monotonic_ns() - began
            if batch is None:
                continue
            priority = rng.random(batch.index.shape[0], dtype=np.float32) * 2.0
            client.send_priorities(batch.index, batch.id, priority)
            counters[0] += 1
            counters[2] = client.batches_by_shared_memory
    finally:
        client.close()
        ctx.destroy(linger=0)


def _window(probe: ReplayProbe, sampler: Any, sent: Any, duration: float) -> dict[str, float]:
    s0, b0, w0, p0 = probe.stats(), sampler[0], sampler[1], sum(sent)
    time.sleep(duration)
    s1, b1, w1, p1 = probe.stats(), sampler[0], sampler[1], sum(sent)
    span = s1["t"] - s0["t"]
    return {
        "ingest": (s1["inserted"] - s0["inserted"]) / span,
        "pushed": (p1 - p0) / span,
        "batches": (b1 - b0) / span,
        "sampled": (s1["sampled"] - s0["sampled"]) / span,
        "wait_fraction": min(1.0, (w1 - w0) / 1e9 / span),
    }


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SHAPES), default="cartpole", help="transition preset")
    parser.add_argument("--pushers", type=int, default=0, help="pushing processes (default 4; quick 2)")
    parser.add_argument("--send-size", type=int, default=0, help="transitions per message (default per --size)")
    parser.add_argument("--duration", type=float, default=0.0, help="seconds per measured window")
    parser.add_argument("--repeats", type=int, default=0, help="windows per phase (medians are reported)")
    parser.add_argument("--capacity", type=int, default=0, help="replay capacity (default per --size)")
    parser.add_argument("--batch-size", type=int, default=512, help="learner batch size")
    parser.add_argument("--ingest-rate", type=float, default=10_000, help="capped ingest (transitions/s) phase")
    parser.add_argument("--no-raw", action="store_true", help="skip the raw PUSH/PULL reference")
    parser.add_argument(
        "--no-wrap", action="store_true", help="measure before the buffer has been filled once (--quick implies it)"
    )
    parser.add_argument("--profile", action="store_true", help="profile the replay server with cProfile")
    parser.add_argument(
        "--socket-batches", action="store_true", help="batches over the socket, not the learner's shared memory"
    )
    args = parser.parse_args()
    args.send_size = args.send_size or DEFAULT_SEND_SIZE[args.size]
    args.capacity = args.capacity or DEFAULT_CAPACITY[args.size]
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.no_wrap = args.no_wrap or args.quick
    args.pushers = args.pushers or (2 if args.quick else 4)
    return args


@dataclasses.dataclass(frozen=True)
class Setup:
    """The run's config and ports, and the sizes that turn counts into bytes."""

    shape: Shape
    base: int
    overrides: list[str]
    config: Any
    msg_bytes: int
    row_bytes: float
    batch_bytes: int
    profile_path: str


def set_up(args: argparse.Namespace) -> Setup:
    shape = SHAPES[args.size]
    min_size = min(args.capacity, max(args.batch_size, 4 * args.send_size, 2_000))
    overrides = [
        "replay.samples_per_insert=0",
        f"replay.capacity={args.capacity}",
        f"replay.min_size={min_size}",
        f"learner.batch_size={args.batch_size}",
        f"actor.send_size={args.send_size}",
        f"net.shared_memory_batches={'false' if args.socket_batches else 'true'}",
    ]
    base = free_port_base()
    config = run_config(base, overrides)
    msg_bytes = frames_bytes(transitions_frames(shape, args.send_size, 0, 0)[0])
    obs_bytes = int(np.prod(shape.obs_shape)) * np.dtype(shape.obs_dtype).itemsize
    batch_bytes = args.batch_size * (2 * obs_bytes + 8 + 4 + 4 + 4 + 8 + 8)
    profile_path = str(RESULTS_DIR / f"{NAME}-replay.prof") if args.profile else ""
    row_bytes = msg_bytes / args.send_size
    print(
        f"{NAME}: {args.size} transitions ({row_bytes:.0f} B each on the wire), {args.send_size} per message "
        f"({msg_bytes / 1024:.1f} KiB), {args.pushers} pushers, batch {args.batch_size}, "
        f"{args.repeats} x {args.duration:g} s windows"
    )
    return Setup(shape, base, overrides, config, msg_bytes, row_bytes, batch_bytes, profile_path)


def run_description(args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    return {
        "size": args.size,
        "send_size": args.send_size,
        "message_bytes": setup.msg_bytes,
        "transition_bytes": setup.row_bytes,
        "pushers": args.pushers,
        "batch_size": args.batch_size,
        "capacity": args.capacity,
        "measured_after_wrap": not args.no_wrap,
        "goals": {"ingest_transitions_per_s": GOAL_INGEST[args.size], "batches_per_s_at_rate": GOAL_BATCHES_AT_RATE},
    }


def measure_raw_references(children: Children, args: argparse.Namespace, setup: Setup) -> dict[str, Any]:
    """Raw PUSH/PULL with distdqn's socket options and (not in --quick) with ZeroMQ's defaults."""
    out: dict[str, Any] = {}
    for key, distdqn_options in (("raw_distdqn_options", True), ("raw_default_options", False)):
        if args.no_raw or (args.quick and not distdqn_options):
            break
        send_hwm = setup.config.net.send_hwm
        msgs = measure_raw(
            children, setup.shape, args.send_size, args.pushers, send_hwm, args.duration, args.repeats, distdqn_options
        )
        out[key] = {
            "messages_per_s": summarize(msgs),
            "transitions_per_s": summarize([m * args.send_size for m in msgs]),
            "mb_per_s": summarize([m * setup.msg_bytes / 1e6 for m in msgs]),
        }
    return out


@dataclasses.dataclass
class Traffic:
    """The replay server under load: its probe, the sampling learner's counters, the pushers' controls."""

    probe: ReplayProbe
    sampler_counts: Any
    rate: Any
    sent: Any
    processes: list[Any]


def start_traffic(children: Children, ctx: zmq.Context, args: argparse.Namespace, setup: Setup) -> Traffic:
    net = setup.config.net
    server = start_replay_server(children, setup.base, setup.overrides, setup.shape, setup.profile_path)
    probe = ReplayProbe(ctx, net.sample_port)
    sampler_counts, sampler_stop = shared_counters(3), MP.Event()
    sampler_args = (setup.base, setup.overrides, setup.shape, sampler_counts, sampler_stop)
    sampler = children.spawn("sampler", sampler_main, *sampler_args, stop=sampler_stop)
    rate, sent, push_stop = shared_floats(1), shared_counters(args.pushers), MP.Event()
    pushers = []
    for i in range(args.pushers):
        pusher_args = (i, net.ingest_port, setup.shape, args.send_size, net.send_hwm, rate, sent, push_stop, 0)
        pushers.append(children.spawn(f"pusher-{i}", pusher_main, *pusher_args, stop=push_stop))
    return Traffic(probe, sampler_counts, rate, sent, [*pushers, sampler, server])


def wait_for_steady_state(children: Children, args: argparse.Namespace, traffic: Traffic) -> None:
    wait_for(lambda: traffic.sampler_counts[0] >= 3, 2 * READY_TIMEOUT_S, "the first sampled batches", children)
    if not args.no_wrap:
        # Fresh pages of the (lazily zeroed) storage cost a page fault each: measure the steady state,
        # after every slot has been written once, as a long run would see it.
        wait_for(
            lambda: traffic.probe.stats()["inserted"] >= args.capacity,
            max(60.0, args.capacity / 2_000),
            f"the buffer to fill to capacity ({args.capacity:,}); lower --capacity or pass --no-wrap",
            children,
        )
    time.sleep(SETTLE_S)


def measure_phases(children: Children, args: argparse.Namespace, traffic: Traffic) -> dict[str, list[dict[str, float]]]:
    """Windows of ingest flat out and of ingest capped at --ingest-rate, alternating."""
    phases: dict[str, list[dict[str, float]]] = {"ingest": [], "sample_at_rate": []}
    for _ in range(args.repeats):
        traffic.rate[0] = 0.0
        time.sleep(SETTLE_S)
        phases["ingest"].append(_window(traffic.probe, traffic.sampler_counts, traffic.sent, args.duration))
        traffic.rate[0] = args.ingest_rate / args.pushers
        time.sleep(SETTLE_S)
        phases["sample_at_rate"].append(_window(traffic.probe, traffic.sampler_counts, traffic.sent, args.duration))
        children.check_alive()
    return phases


def measure(args: argparse.Namespace, setup: Setup, results: dict[str, Any]) -> None:
    """The measured run; its numbers go into `results`."""
    if setup.profile_path:
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    with Children() as children, zmq_context() as ctx:
        results.update(measure_raw_references(children, args, setup))
        traffic = start_traffic(children, ctx, args, setup)
        wait_for_steady_state(children, args, traffic)
        phases = measure_phases(children, args, traffic)
        final = traffic.probe.stats()
        results["batches_by_shared_memory"] = traffic.sampler_counts[2] / max(traffic.sampler_counts[0], 1)
        traffic.probe.close()
        children.stop(traffic.processes)
    add_phase_results(results, phases, final, setup)


def add_phase_results(
    results: dict[str, Any], phases: dict[str, list[dict[str, float]]], final: dict[str, Any], setup: Setup
) -> None:
    for phase, windows in phases.items():
        results[phase] = {
            key: summarize([w[key] for w in windows])
            for key in ("ingest", "pushed", "batches", "sampled", "wait_fraction")
        }
        results[phase]["ingest_mb_per_s"] = summarize([w["ingest"] * setup.row_bytes / 1e6 for w in windows])
        results[phase]["batch_mb_per_s"] = summarize([w["batches"] * setup.batch_bytes / 1e6 for w in windows])
    results["server_rejected"] = final.get("rejected", {})
    results["server_inserted"] = final.get("inserted")
    ingest_median = results["ingest"]["ingest"]["median"]
    raw = results.get("raw_distdqn_options", {}).get("transitions_per_s", {}).get("median")
    raw_default = results.get("raw_default_options", {}).get("transitions_per_s", {}).get("median")
    results["ratios"] = {
        "ingest_vs_raw_distdqn_options": ratio(ingest_median, raw),
        "ingest_vs_raw_default_options": ratio(ingest_median, raw_default),
        "raw_distdqn_vs_default_options": ratio(raw, raw_default),
    }


def print_report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    rows = []
    for key, label in (
        ("raw_distdqn_options", "raw PUSH/PULL, distdqn socket options"),
        ("raw_default_options", "raw PUSH/PULL, zmq default options"),
    ):
        if key in results:
            r = results[key]
            rows.append([label, r["transitions_per_s"]["median"], r["mb_per_s"]["median"], None, None])
    for key, label in (
        ("ingest", "replay: ingest flat out + sampling"),
        ("sample_at_rate", f"replay: ingest capped at {args.ingest_rate:,.0f}/s + sampling"),
    ):
        r = results[key]
        rows.append(
            [
                label,
                r["ingest"]["median"],
                r["ingest_mb_per_s"]["median"],
                r["batches"]["median"],
                r["batch_mb_per_s"]["median"],
            ]
        )
    print_table(
        f"{NAME} ({args.size}, medians of {args.repeats} x {args.duration:g} s)",
        ["phase", "transitions/s", "MB/s in", f"batches/s ({args.batch_size})", "MB/s out"],
        rows,
    )
    ratios = results["ratios"]
    print(
        f"ingest / raw (same socket options): {fmt(ratios['ingest_vs_raw_distdqn_options'])}   "
        f"ingest / raw (zmq defaults): {fmt(ratios['ingest_vs_raw_default_options'])}   "
        f"raw distdqn / raw default options: {fmt(ratios['raw_distdqn_vs_default_options'])}"
    )
    print(f"batches through the learner's shared-memory batch file: {results['batches_by_shared_memory']:.0%}")
    print(
        f"goals: ingest >= {GOAL_INGEST[args.size]:,}/s; batches/s at {args.ingest_rate:,.0f}/s ingest >= "
        f"{GOAL_BATCHES_AT_RATE:g} (Atari size)   server rejected: {results['server_rejected'] or 'none'}"
    )


def main() -> int:
    args = parse_args()
    setup = set_up(args)
    results = run_description(args, setup)
    measure(args, setup, results)
    print_report(args, results)
    if setup.profile_path:
        results["profile_replay"] = print_profile(setup.profile_path, "replay server")
    write_result(NAME, args.json, args, results)
    return 0 if not results["server_rejected"] else 1


if __name__ == "__main__":
    run_benchmark(main)
