"""Weight publication latency: from the learner publishing a version to each subscribed actor having applied it.

Why: stale weights make actors explore with an old policy, and Ape-X's off-policy correction only goes
so far; the time from "the learner publishes" to "every actor acts with it" is the number that matters,
so it is measured end to end: the publisher notes the send time of each version, and every subscriber
(a separate process using the real `LearnerLink` drain and `load_numpy_weights` into a real QNetwork, as
an actor does)
reports back (version, applied time). All processes share one machine and CLOCK_MONOTONIC, so the two
clocks compare directly. Three publishers are measured in the same run: the real `ControlServer` thread
(what the learner uses) with shared-memory weights ("shm", the default for actors on the learner's
host), the same thread with them off so every byte crosses the broadcast ("control"), and a bare PUB
socket with the same options ("raw"). control/raw isolates the cost of the control thread from that of
the transport; shm/control is what shared memory saves.

    python benchmarks/weights_latency.py [--subscribers 8] [--publishes 100] [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import struct
import time
from typing import Any

import zmq
from harness.entry import base_parser, run_benchmark
from harness.processes import MP, Children, free_port_base, wait_for, zmq_context
from harness.report import fmt, percentiles, print_table, ratio, write_result
from harness.traffic import run_config

NAME = "weights_latency"
# subscriber index, weight version (-1: "I am up"), applied at (monotonic ns), decode + apply (ns),
# 1 if the version came from shared memory
REPORT = struct.Struct("<qqqqq")
GOAL_P50_MS = 20.0
GOAL_P99_MS = 100.0
READY_TIMEOUT_S = 180.0  # eight processes importing torch on a two-core machine take a while


@dataclasses.dataclass(frozen=True)
class NetSpec:
    """A Q-network as plain values, so that spawned subscribers can build the same one."""

    name: str
    obs_shape: tuple[int, ...]
    num_actions: int
    torso: str
    hidden: tuple[int, ...]

    def build(self) -> Any:
        from common.config import NetworkConfig
        from common.networks import QNetwork

        return QNetwork(self.obs_shape, self.num_actions, NetworkConfig(torso=self.torso, hidden=self.hidden))


NETS = {
    "mlp": NetSpec("mlp", (4,), 2, "mlp", (128, 128)),  # the CartPole preset's network
    "nature_cnn": NetSpec("nature_cnn", (4, 84, 84), 6, "nature_cnn", (512,)),
}


def subscriber_main(
    index: int, port_base: int, raw_port: int, report_port: int, nets: list[NetSpec], step_ms: float, stop: Any
) -> None:
    """An actor's weight path and nothing else: drain the SUB socket to the newest version, decode, apply.

    With `step_ms` > 0 it checks only every `step_ms`, as an actor does between environment steps;
    otherwise it waits in poll, which measures the transport and the apply alone."""
    import torch

    from actor.link import LearnerLink
    from common.networks import load_numpy_weights
    from common.sockets import connect, make_socket

    torch.set_num_threads(1)  # as every actor does
    models = {}
    for spec in nets:
        model = spec.build().eval()
        models[frozenset(model.state_dict())] = model

    def load(arrays: Any) -> None:
        load_numpy_weights(models[frozenset(arrays)], arrays)

    config = run_config(port_base, [])
    ctx = zmq.Context()
    link = LearnerLink("127.0.0.1", config.net.learner_port, role="actor", ctx=ctx)
    link.subscribe(config)
    assert link.weights_sub is not None
    connect(link.weights_sub, "127.0.0.1", raw_port)  # the bare PUB publisher, measured in the same run
    report = make_socket(ctx, zmq.PUSH, hwm=100_000)
    connect(report, "127.0.0.1", report_port)
    report.send(REPORT.pack(index, -1, time.monotonic_ns(), 0, 0))
    try:
        while not stop.is_set() and link.stop_reason is None:
            if step_ms > 0:
                time.sleep(step_ms / 1000)
            elif not link.weights_sub.poll(100):
                continue
            seen = time.monotonic_ns()
            msg = link.newest_weights(load)
            if msg is None:
                continue
            applied = time.monotonic_ns()
            shared = int(msg.sender == "shared-memory")
            report.send(REPORT.pack(index, msg.meta["version"], applied, applied - seen, shared))
    finally:
        link.close()
        report.close(linger=0)
        ctx.destroy(linger=0)


class Publisher:
    """Both publishers, stamping each version's send time just before the learner would build it."""

    def __init__(self, ctx: zmq.Context, config: Any, raw_port: int, modes: list[str]) -> None:
        from common.sockets import bind, make_socket
        from common.wire import Encoder

        self.raw = make_socket(ctx, zmq.PUB, hwm=4)  # ControlServer's PUB options
        bind(self.raw, "127.0.0.1", raw_port, "benchmark weight broadcast")
        self.encode = Encoder("learner")
        self.control = None
        if "control" in modes or "shm" in modes:
            from learner.control import ControlServer

            self.control = ControlServer(config, ctx)
            self.control.start()
        self.version = 0
        self.sent_at: dict[int, int] = {}
        self.call_ns: list[int] = []

    def publish(self, mode: str, model: Any) -> int:
        """What Learner.publish does on a CPU learner, timed from its start: the raw publisher sends a copy,
        the control server gets views of the parameters (it copies them once, to where they are going)."""
        from common.networks import parameter_views, weights_to_numpy

        self.version += 1
        began = time.monotonic_ns()
        if mode == "raw":
            arrays = weights_to_numpy(model)
            self.raw.send_multipart(self.encode("weights", {"version": self.version}, arrays), copy=False)
        else:
            assert self.control is not None
            self.control.set_weights(self.version, parameter_views(model), live=True)
        self.call_ns.append(time.monotonic_ns() - began)
        self.sent_at[self.version] = began
        return self.version

    def close(self) -> None:
        if self.control is not None:
            self.control.request_stop("benchmark over")
            self.control.close()
        self.raw.close(linger=0)


class Reports:
    """(subscriber, version) -> applied time and apply cost, read from the PULL socket as they come."""

    def __init__(self, ctx: zmq.Context, port: int) -> None:
        from common.sockets import bind, make_socket

        self.sock = make_socket(ctx, zmq.PULL, hwm=100_000)
        bind(self.sock, "127.0.0.1", port, "benchmark reports")
        self.up: set[int] = set()
        self.applied: dict[tuple[int, int], tuple[int, int, int]] = {}
        self.newest: dict[int, tuple[int, int]] = {}  # subscriber -> (version, came by shared memory)

    def collect(self, until_ns: int) -> None:
        while (left := until_ns - time.monotonic_ns()) > 0:
            if not self.sock.poll(max(1, left // 1_000_000)):
                continue
            while True:
                try:
                    data = self.sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                sub, version, applied, cost, shared = REPORT.unpack(data)
                self.up.add(sub)
                if version >= 0:
                    self.applied[(sub, version)] = (applied, cost, shared)
                    self.newest[sub] = max(self.newest.get(sub, (-1, 0)), (version, shared))

    def close(self) -> None:
        self.sock.close(linger=0)


def run_phase(
    publisher: Publisher, reports: Reports, mode: str, spec: NetSpec, subscribers: int, publishes: int, period_ms: float
) -> dict[str, Any]:
    model = spec.build()
    period_ns = int(period_ms * 1e6)
    if publisher.control is not None:
        publisher.control.set_shared_memory(mode == "shm")
    # Warm up until every subscriber has applied a version of this phase, by this phase's path
    # (connections, subscriptions, allocator, caches).
    first = publisher.version + 1
    by_shm = int(mode == "shm")
    deadline = time.monotonic() + 60
    while sum(1 for v, shared in reports.newest.values() if v >= first and shared == by_shm) < subscribers:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{mode}/{spec.name}: not every subscriber received weights within 60 s")
        publisher.publish(mode, model)
        reports.collect(time.monotonic_ns() + period_ns)
    publisher.call_ns.clear()
    versions = []
    tick = time.monotonic_ns()
    for _ in range(publishes):
        versions.append(publisher.publish(mode, model))
        tick += period_ns
        reports.collect(tick)
    reports.collect(time.monotonic_ns() + max(1_000_000_000, 5 * period_ns))
    latencies, costs, shared = [], [], 0
    for version in versions:
        for sub in range(subscribers):
            hit = reports.applied.get((sub, version))
            if hit is not None:
                latencies.append((hit[0] - publisher.sent_at[version]) / 1e6)
                costs.append(hit[1] / 1e6)
                shared += hit[2]
    expected = publishes * subscribers
    return {
        "network": spec.name,
        "publisher": mode,
        "params": int(sum(p.numel() for p in model.parameters())),
        "message_bytes": int(sum(t.numel() * t.element_size() for t in model.state_dict().values())),
        "latency_ms": {**percentiles(latencies, (50, 90, 99)), "max": max(latencies, default=None)},
        "apply_ms_p50": percentiles(costs, (50,))["p50"],
        "publish_call_ms_p50": percentiles([c / 1e6 for c in publisher.call_ns], (50,))["p50"],
        "delivered": len(latencies),
        "expected": expected,
        "delivered_fraction": len(latencies) / expected if expected else None,
        "shared_memory_fraction": shared / len(latencies) if latencies else None,
    }


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--subscribers", type=int, default=0, help="actor-like subscribers (default 8; quick 2)")
    parser.add_argument("--publishes", type=int, default=0, help="measured publications per phase (default 100)")
    parser.add_argument("--period-ms", type=float, default=0.0, help="time between publications (default 100)")
    parser.add_argument("--nets", default="mlp,nature_cnn", help="comma-separated: mlp, nature_cnn")
    parser.add_argument("--publisher", choices=["all", "shm", "control", "raw"], default="all")
    parser.add_argument("--actor-step-ms", type=float, default=0.0, help="check for weights only every so often")
    args = parser.parse_args()
    args.subscribers = args.subscribers or (2 if args.quick else 8)
    args.publishes = args.publishes or (10 if args.quick else 100)
    args.period_ms = args.period_ms or (40.0 if args.quick else 100.0)
    return args


def measure(args: argparse.Namespace, specs: list[NetSpec], modes: list[str]) -> list[dict[str, Any]]:
    """The measured run: start the subscribers, then one phase per network and publisher."""
    base = free_port_base(4)
    config = run_config(base, [])
    raw_port, report_port = base + 2, base + 3  # the replay ports of this config, unused here
    phases = []
    with Children() as children, zmq_context() as ctx:
        reports = Reports(ctx, report_port)
        publisher = Publisher(ctx, config, raw_port, modes)
        stop = MP.Event()
        try:
            for i in range(args.subscribers):
                sub_args = (i, base, raw_port, report_port, specs, args.actor_step_ms, stop)
                children.spawn(f"subscriber-{i}", subscriber_main, *sub_args, stop=stop)

            def all_up() -> bool:
                reports.collect(time.monotonic_ns() + 50_000_000)
                return len(reports.up) >= args.subscribers

            wait_for(all_up, READY_TIMEOUT_S, "every subscriber to start", children)
            for spec in specs:
                for mode in modes:
                    phases.append(
                        run_phase(publisher, reports, mode, spec, args.subscribers, args.publishes, args.period_ms)
                    )
                    children.check_alive()
        finally:
            stop.set()
            publisher.close()
            reports.close()
    return phases


def ratios_of(specs: list[NetSpec], phases: list[dict[str, Any]]) -> dict[str, Any]:
    """p50 latency of control vs. raw (the control thread's cost) and of shm vs. control, per network."""
    ratios: dict[str, Any] = {}
    for spec in specs:
        by_mode = {p["publisher"]: p for p in phases if p["network"] == spec.name}
        for a, b in (("control", "raw"), ("shm", "control")):
            if a in by_mode and b in by_mode:
                ratios[f"{spec.name}_p50_{a}_vs_{b}"] = ratio(
                    by_mode[a]["latency_ms"]["p50"], by_mode[b]["latency_ms"]["p50"]
                )
    return ratios


def print_report(args: argparse.Namespace, phases: list[dict[str, Any]], ratios: dict[str, Any]) -> None:
    rows = []
    for p in phases:
        lat = p["latency_ms"]
        row = [f"{p['network']} / {p['publisher']}", p["params"], p["message_bytes"] / 1e6]
        row += [lat["p50"], lat["p90"], lat["p99"], lat["max"], p["apply_ms_p50"], p["publish_call_ms_p50"]]
        rows.append([*row, 100 * (p["delivered_fraction"] or 0), 100 * (p["shared_memory_fraction"] or 0)])
    print_table(
        f"{NAME}: publish -> applied by {args.subscribers} subscribers, ms",
        [
            "network / publisher",
            "params",
            "MB",
            "p50",
            "p90",
            "p99",
            "max",
            "apply p50",
            "publish p50",
            "delivered %",
            "by shm %",
        ],
        rows,
    )
    if ratios:
        print("  ".join(f"{k}: {fmt(v)}" for k, v in ratios.items()))
    print(
        f"goal (Nature CNN, 8 subscribers): p50 <= {GOAL_P50_MS:g} ms, p99 <= {GOAL_P99_MS:g} ms. "
        "'apply' is the subscriber's drain + decode + load_numpy_weights; 'publish' the publisher's call."
    )


def main() -> int:
    args = parse_args()
    specs = [NETS[name] for name in args.nets.split(",")]
    # control before shm: turning sharing off and on again gives each network a file of its own layout
    modes = ["control", "raw", "shm"] if args.publisher == "all" else [args.publisher]
    print(
        f"{NAME}: {args.subscribers} subscribers, {args.publishes} publications every {args.period_ms:g} ms "
        f"per phase, networks {args.nets}, publishers {', '.join(modes)}"
    )
    phases = measure(args, specs, modes)
    ratios = ratios_of(specs, phases)
    print_report(args, phases, ratios)
    results = {
        "subscribers": args.subscribers,
        "period_ms": args.period_ms,
        "phases": phases,
        "ratios": ratios,
        "goals": {"nature_cnn_p50_ms": GOAL_P50_MS, "nature_cnn_p99_ms": GOAL_P99_MS},
        "latency_ms_per_subscriber_version": "publish start (before any copy) -> load_numpy_weights done",
    }
    write_result(NAME, args.json, args, results)
    ok = all(p["delivered"] > 0 for p in phases)
    return 0 if ok else 1


if __name__ == "__main__":
    run_benchmark(main)
