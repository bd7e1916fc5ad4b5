"""`python -m actor` / `distdqn-actor`: join a learner's run as an actor (or, with --evaluate, evaluator).

Only the learner's address is needed; everything else (env, network, n-step, addresses) comes from it.
The exception is CurveZMQ: key files are local to each machine, so an actor names its own with flags
(paths only, never key material) and ignores the learner's curve settings.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

# Before numpy loads: the acting pass is a few rows, and OpenBLAS's second thread would spin on a core
# that the environments and the replay server need (actors run torch with one thread too).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import zmq  # noqa: E402

from common.cli import _Parser
from common.errors import ConfigError
from common.process import install_stop_handlers, run_cli, setup_logging
from common.security import ClientSecurity
from common.sockets import check_libzmq, parse_address


def _parse() -> argparse.Namespace:
    parser = _Parser(
        prog="distdqn-actor",
        description="Actor: steps environments, sends transitions to replay.",
        epilog="examples:\n"
        "  distdqn-actor --learner 127.0.0.1:5550                  # the learner assigns the index\n"
        "  distdqn-actor --learner gpu-box:5550 --actor-index 2 \\\n"
        "      --curve-secret-key keys/host-b.key_secret --curve-server-key keys/server.key\n"
        "  distdqn-actor --evaluate --learner 127.0.0.1:5550       # greedy evaluation episodes\n",
    )
    parser.add_argument("--learner", default="127.0.0.1:5550", help="learner control address HOST:PORT")
    parser.add_argument(
        "--actor-index", type=int, default=-1, help="global actor index (sets epsilon); -1: the learner assigns one"
    )
    parser.add_argument("--evaluate", action="store_true", help="run as the evaluator (greedy, never writes replay)")
    parser.add_argument(
        "--curve-secret-key", default="", metavar="PATH", help="this actor's NAME.key_secret (CurveZMQ, mode 0600)"
    )
    parser.add_argument(
        "--curve-server-key", default="", metavar="PATH", help="the servers' public NAME.key (CurveZMQ)"
    )
    parser.add_argument(
        "--relay",
        default="",
        metavar="PATH",
        help="this host's weight relay socket (DIR/relay.sock, see actor.relay); the learner's broadcast if it fails",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    return parser.parse_args()


def _main() -> int:
    args = _parse()
    try:
        host, port = parse_address(args.learner)
    except ValueError as err:
        raise ConfigError(f"--learner: {err}") from None
    if bool(args.curve_secret_key) != bool(args.curve_server_key):
        raise ConfigError("--curve-secret-key and --curve-server-key go together (CurveZMQ needs both)")
    role = "evaluator" if args.evaluate else "actor"
    if args.curve_secret_key:
        curve = ClientSecurity.from_paths(args.curve_secret_key, args.curve_server_key)
    else:  # the launcher's per-run keys (DISTDQN_RUN_KEYS), if any
        curve = ClientSecurity.from_run_keys(role)
    if args.evaluate:
        name = "evaluator"
    else:
        name = f"actor-{args.actor_index}" if args.actor_index >= 0 else f"actor-pid{os.getpid()}"
    setup_logging(name, verbose=args.verbose)
    check_libzmq()
    stop = install_stop_handlers()

    from actor.link import LearnerLink

    ctx = zmq.Context()
    link = LearnerLink(host, port, role=role, ctx=ctx, curve=curve, relay=args.relay)
    worker = None
    try:
        welcome = link.join(args.actor_index, stop)
        link.subscribe(welcome.config)
        if args.evaluate:
            from actor.evaluator import Evaluator

            worker = Evaluator(link, welcome.config)
        else:
            from actor.actor import Actor

            worker = Actor(link, welcome.config, welcome.actor_index, welcome.epsilon)
            link.connections.watch(worker.push, "replay ingest")
        # Fetched last, once everything else is built, so the weights are as fresh as they can be.
        first = link.fetch_weights(stop)
        worker.q.load(first.arrays)
        logging.getLogger(name).info("joined run %s with weights v%d", welcome.run_id, first.meta["version"])
        worker.run(stop)
    finally:
        taken = ", ".join(f"{how} {n}" for how, n in sorted(link.received.items())) or "none"
        logging.getLogger(name).info("weight versions taken: %s", taken)
        link.connections.close()  # first: a monitor socket in the actor's own context would hold its close
        if worker is not None:
            worker.close()
        link.close()
        ctx.destroy(linger=500)
        logging.shutdown()
    return 0


def main() -> None:
    sys.exit(run_cli(_main))


if __name__ == "__main__":
    main()
