"""The system at Ape-X's shape: 256 real actor connections against one learner and the replay shards.

Why: every other benchmark isolates one path; this one runs the real roles together at the actor count
Ape-X used (its 360 actors, scaled to what one machine holds) and measures what scales with actors: the
transitions stored, how soon each actor applies a new version (publish -> applied, CLOCK_MONOTONIC on
every side), how far behind actors run (version lag), the learner's control thread's CPU share, each
server's RSS, and the learner's bytes sent per version with and without relays. The replay ledgers must
balance: every transition sent is stored, rejected, dropped or lost, and a clean run rejects and loses
none.

The servers are the real `python -m replay` (one per shard) and `python -m learner` (with a stamp of each
publication's start, harness.stamped_learner); the actors are real `Actor`/`LearnerLink` instances, many
threads to a process (harness.actor_host), each with its own sockets, paced so that stepping does not
take the machine. One host, phases in turn (same servers, new actors):
- shm: actors on the learner's host, weights from its shared-memory file (the default locally);
- broadcast: shared memory off in the actors, full weights to each connection (remote actors without relays);
- relay: `--relays R` weight relays (python -m actor.relay), the actors spread over them.
With `--hosts 3`: network namespaces on a bridge, the servers on one, the actors over three others
behind one relay each, Nature CNN weights (a synthetic Atari-shaped env), CurveZMQ as off-loopback.

    python benchmarks/scale_actors.py [--actors 256] [--per-process 16] [--shards 4] [--hosts 3] [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from harness import scale_run
from harness.entry import base_parser, run_benchmark
from harness.report import fmt, print_table, write_result

NAME = "scale_actors"
GOAL_P50_MS = 50.0  # Nature CNN over three hosts behind relays
HOP_NAMES = {
    "learner": "learner hands over -> broadcast sent",
    "transport": "sent -> a relay has it",
    "relay": "relay writes its file -> notice",
    "actors": "first notice -> each actor acts with it",
}
GOAL_P99_MS = 200.0


def parse_args() -> argparse.Namespace:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--actors", type=int, default=0, help="actor connections (default 256; quick 4)")
    parser.add_argument("--per-process", type=int, default=16, help="actors per actor-host process")
    parser.add_argument("--shards", type=int, default=4, help="replay shards (replay.shards; 1: one server)")
    parser.add_argument("--hosts", type=int, default=0, help="0: one host; 3: three namespace hosts, relays")
    parser.add_argument("--phases", default="shm,broadcast,relay", help="one-host phases, comma-separated")
    parser.add_argument("--relays", type=int, default=3, help="relays in the one-host relay phase")
    parser.add_argument("--steps-per-s", type=float, default=0.0, help="each actor's pace (default 10; CNN 2)")
    parser.add_argument("--seconds", type=float, default=0.0, help="measured window per phase (default 45)")
    parser.add_argument(
        "--keep", default="", metavar="DIR", help="run in DIR and keep its logs (default: a temporary one)"
    )
    parser.add_argument(
        "--publish-period", type=int, default=0, help="learner updates per version (default 25, the preset's; CNN 1)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a config override for the servers, after the benchmark's own (repeatable), e.g. net.io_threads=1",
    )
    args = parser.parse_args()
    cnn = args.hosts > 0
    args.actors = args.actors or (4 if args.quick else 256)
    args.per_process = min(args.per_process, args.actors) if not args.quick else 2
    args.steps_per_s = args.steps_per_s or (2.0 if cnn else 10.0) * (5 if args.quick else 1)
    args.seconds = args.seconds or (6.0 if args.quick else 45.0)
    args.publish_period = args.publish_period or (1 if cnn else 25)
    if args.quick:
        args.phases = "shm,relay" if not cnn else args.phases
        args.relays = 1
    return args


def print_report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    rows = []
    for p in results["phases"]:
        lat = p["latency"]["publish_to_applied_ms"]
        cpu = p["cpu"]
        rows.append(
            [
                p["name"],
                p["actors_running"],
                p["ingest"]["stored_per_s"],
                p["egress"]["versions"] / p["window_s"],
                lat["p50"],
                lat["p99"],
                lat["max"],
                p["latency"]["version_lag_mean"],
                p["latency"]["version_lag_max"],
                100 * cpu["control_thread_share"] if cpu["control_thread_share"] is not None else None,
                p["egress"]["weights_port_bytes_per_version"] / 1e6 if p["egress"]["versions"] else None,
                p["egress"].get("veth_bytes_per_version", 0) / 1e6 or None,
            ]
        )
    print_table(
        f"{NAME}: {args.actors} actors, {results['shards']} replay shard(s), {results['network']} weights "
        f"({results['weights_bytes'] / 1e6:.2f} MB)",
        [
            "phase",
            "actors",
            "stored/s",
            "versions/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            "lag mean",
            "lag max",
            "ctl CPU %",
            "MB/version",
            "veth MB/v",
        ],
        rows,
    )
    for p in results["phases"]:
        if "hops_ms" in p:
            parts = [f"{HOP_NAMES[k]} {fmt(v['p50'])} / {fmt(v['p90'])}" for k, v in p["hops_ms"].items()]
            print(f"where the time goes in {p['name']} (p50 / p90 ms): " + "; ".join(parts))
    rss_rows = [[p["name"], *[f"{k} {v / 2**20:.0f}" for k, v in p["rss_max"].items()]] for p in results["phases"]]
    for row in rss_rows:
        print(f"RSS max (MiB) in {row[0]}: " + ", ".join(row[1:]))
    bal = results["accounting"]
    print(
        f"accounting over {bal['ledgers']} ledger(s), {bal['streams']} streams: sent {bal['sent']} = stored "
        f"{bal['stored']} + rejected {bal['rejected']} + dropped {bal['dropped']} + lost {bal['lost']}; "
        f"the actors dropped {bal['actor_dropped']} unsent at shutdown"
    )
    for problem in bal["problems"]:
        print(f"ACCOUNTING PROBLEM: {problem}")
    print(
        f"pacing: each actor steps at most {args.steps_per_s:g} times/s (env.num_envs=1) and waits for its next "
        "step in a poll on its weight sockets; 'MB/version' is bytes_sent on the learner's weights port "
        "(ss) per version published"
        + ("; 'veth' every byte the servers' host sent" if args.hosts else "")
        + f"; load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    if args.hosts:
        p = results["phases"][0]
        lat = p["latency"]["publish_to_applied_ms"]
        ok = lambda v, goal: "ok" if v is not None and v <= goal else "MISSED"  # noqa: E731
        print(
            f"goal: p50 {fmt(lat['p50'])} <= {GOAL_P50_MS:g} ms {ok(lat['p50'], GOAL_P50_MS)}, p99 {fmt(lat['p99'])}"
            f" <= {GOAL_P99_MS:g} ms {ok(lat['p99'], GOAL_P99_MS)}; learner sent "
            f"{p['egress']['copies_per_version']:.2f} copies per version to {args.hosts} hosts (goal {args.hosts})"
        )


def main() -> int:
    args = parse_args()
    print(
        f"{NAME}: {args.actors} actors in {math.ceil(args.actors / args.per_process)} processes, "
        f"{args.shards} shard(s), {f'{args.hosts} namespace hosts' if args.hosts else 'one host'}, "
        f"{args.seconds:g} s measured per phase"
    )
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp = Path(args.keep).resolve()
            tmp.mkdir(parents=True)
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="distdqn-scale-")))
        try:
            results = scale_run.run(args, tmp)
        except scale_run.Skipped as why:
            print(f"skipped: {why}")
            write_result(NAME, args.json, args, {"skipped": str(why)})
            return 0
    raw = {p["name"]: p.pop("actors_raw") for p in results["phases"]}
    results["goals"] = {"p50_ms": GOAL_P50_MS, "p99_ms": GOAL_P99_MS} if args.hosts else {}
    results["load_average_end"] = os.getloadavg()
    write_result(NAME, args.json, args, results)  # first: a figure is never lost to the report
    print_report(args, results)
    del raw
    problems = list(results["accounting"]["problems"])
    problems += [f"no weights applied in phase {p['name']}" for p in results["phases"] if not p["latency"]["applied"]]
    if problems:
        print(f"FAILED: {len(problems)} problem(s), the first: {problems[0]}")
        return 1
    return 0


if __name__ == "__main__":
    run_benchmark(main)
