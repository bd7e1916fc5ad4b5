"""Many real actors in one process: `Actor` and `LearnerLink` instances, one thread and its own sockets each.

Why: 256 actor processes do not fit a small machine, and the learner and replay see connections, not
processes. Each thread joins the learner (hello, welcome, its own global index), pushes to replay and
applies weights exactly as `python -m actor` does; the benchmark adds two things around the real code:

- pacing: the vector env is wrapped so that each actor steps at most `--steps-per-s`. While it waits
  for its next step the actor waits in a poll on its own weight sockets and takes new weights the
  moment a notice arrives, where an unpaced actor looks every `actor.actor.WEIGHTS_POLL_S` between steps;
- a hook around `Actor._take_weights` that records (version, CLOCK_MONOTONIC ns) each time the actor's
  weight version changes, which the benchmark compares with the learner's publication times (network
  namespaces share the clock).

On SIGTERM every actor stops as a real one does (its stream's end to replay, a last report), and the
process writes OUT (JSON): each actor's index, applied versions, env steps, transitions sent and dropped.
A status file (OUT.status) says every second how many actors have weights and are stepping.

    python -m harness.actor_host --learner HOST:PORT --first-index I --count N --out PATH [...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as python -m actor: one BLAS thread

import argparse  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import zmq  # noqa: E402


@dataclass
class Record:
    index: int
    applied: list[tuple[int, int]] = field(default_factory=list)  # (version, monotonic ns)
    state: str = "starting"  # starting, running, stopped, failed
    error: str = ""
    env_steps: int = 0
    sent: int = 0
    dropped: int = 0
    received: dict[str, int] = field(default_factory=dict)


class PacedEnv:
    """The actor's vector env, stepped at most `rate` times a second; the waits go to weight notices."""

    def __init__(self, env: Any, rate: float, take_weights: Any, sockets: list[zmq.Socket]) -> None:
        self.env = env
        self.period = 1.0 / rate if rate > 0 else 0.0
        self.take_weights = take_weights
        self.poller = zmq.Poller()
        for sock in sockets:
            self.poller.register(sock, zmq.POLLIN)
        self.next_due = time.monotonic()

    def step(self, actions: Any) -> Any:
        now = time.monotonic()
        while now < self.next_due:
            if self.poller.poll(max(1, int((self.next_due - now) * 1000))):
                self.take_weights()
            now = time.monotonic()
        self.next_due = max(self.next_due + self.period, now - self.period)  # no catch-up burst
        return self.env.step(actions)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)


def run_actor(record: Record, args: argparse.Namespace, ctx: zmq.Context, curve: Any, stop: threading.Event) -> None:
    from actor.actor import Actor
    from actor.link import LearnerLink
    from common.sockets import parse_address

    host, port = parse_address(args.learner)
    link = LearnerLink(
        host, port, role="actor", ctx=ctx, curve=curve, shared_memory=not args.broadcast, relay=args.relay
    )
    actor = None
    try:
        welcome = link.join(record.index, stop)
        link.subscribe(welcome.config)
        actor = Actor(link, welcome.config, welcome.actor_index, welcome.epsilon)
        link.connections.watch(actor.push, "replay ingest")
        take = actor._take_weights

        def hooked() -> None:  # the benchmark's clock on every version change
            before = link.version
            take()
            if link.version != before and link.version >= 0:
                record.applied.append((link.version, time.monotonic_ns()))

        actor._take_weights = hooked  # type: ignore[method-assign]
        first = link.fetch_weights(stop)
        actor.q.load(first.arrays)
        record.applied.append((link.version, time.monotonic_ns()))
        sockets = [s for s in (link.weights_sub, link.relay.sub if link.relay else None) if s is not None]
        actor.env = PacedEnv(actor.env, args.steps_per_s, hooked, sockets)  # type: ignore[assignment]
        record.state = "running"
        actor.run(stop)
        record.state = "stopped"
    except Exception as err:  # one actor that fails is reported, the others go on
        record.state, record.error = "failed", f"{type(err).__name__}: {err}"
        traceback.print_exc()
    finally:
        record.received = dict(link.received)
        link.connections.close()  # first: as python -m actor does
        if actor is not None:
            record.env_steps, record.sent = actor.env_steps, actor.transitions_sent
            record.dropped = actor.transitions_dropped
            actor.close()
        link.close()


def write_json(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--learner", required=True)
    parser.add_argument("--first-index", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--steps-per-s", type=float, default=10.0, help="each actor's pace (0: unpaced)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--relay", default="", help="this host's relay socket")
    parser.add_argument("--broadcast", action="store_true", help="never shared memory: full weights each")
    parser.add_argument("--curve-secret-key", default="")
    parser.add_argument("--curve-server-key", default="")
    args = parser.parse_args()

    from common.process import install_stop_handlers, setup_logging
    from common.security import ClientSecurity

    setup_logging(f"actor-host-{args.first_index}")
    stop = install_stop_handlers()
    if args.curve_secret_key:
        curve = ClientSecurity.from_paths(args.curve_secret_key, args.curve_server_key)
    else:
        curve = ClientSecurity.from_run_keys("actor")
    ctx = zmq.Context()
    records = [Record(args.first_index + k) for k in range(args.count)]
    threads = [
        threading.Thread(target=run_actor, args=(r, args, ctx, curve, stop), name=f"actor-{r.index}", daemon=True)
        for r in records
    ]
    for t in threads:
        t.start()
    status = args.out.with_name(args.out.name + ".status")
    while not stop.wait(1.0):
        states = [r.state for r in records]
        write_json(status, {state: states.count(state) for state in ("starting", "running", "stopped", "failed")})
    for t in threads:
        t.join(timeout=30)
    write_json(args.out, {"pid": os.getpid(), "actors": [r.__dict__ for r in records]})
    ctx.destroy(linger=500)


if __name__ == "__main__":
    main()
