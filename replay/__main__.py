"""`python -m replay` / `distdqn-replay`: run the replay server until SIGINT/SIGTERM.

With `--run-dir` it can snapshot its buffer to RUN_DIR/replay/, and `--restore` starts from the newest
snapshot there, so a replay server that crashed comes back with the transitions it had. With
`replay.shards` K > 1, one process per shard (`--shard k`) runs with its own ports and RUN_DIR/replay-k/.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from common.cli import config_from_args, config_parser
from common.envs import env_spec
from common.process import install_stop_handlers, run_cli, setup_logging
from common.run_dir import check_run_dir
from common.shards import shard_config
from common.sockets import check_libzmq


def _main() -> int:
    parser = config_parser(
        "distdqn-replay",
        "Replay server: stores actors' transitions, serves batches.",
        "  distdqn-replay --preset cartpole --run-dir runs/demo\n"
        "  distdqn-replay --restore --run-dir runs/demo          # start from runs/demo/replay's snapshot\n",
    )
    parser.add_argument(
        "--restore",
        action="store_true",
        help="start from RUN_DIR/replay/snapshot.npz (or snapshot.prev.npz); starts empty, with a warning, if none",
    )
    parser.add_argument(
        "--shard",
        type=int,
        default=0,
        help="which of the run's replay.shards servers this is (ports, RUN_DIR/replay-K; default 0)",
    )
    args = parser.parse_args()
    run_config = config_from_args(args)
    config = shard_config(run_config, args.shard)  # a bad --shard is one line, before anything starts
    if args.run_dir is not None:
        check_run_dir(Path(args.run_dir))
    setup_logging("replay" if args.shard == 0 else f"replay-{args.shard}", verbose=args.verbose)
    check_libzmq()
    stop = install_stop_handlers()
    from replay.server import ReplayServer

    server = ReplayServer(config, env_spec(config.env), run_dir=args.run_dir, restore=args.restore, shard=args.shard)
    try:
        server.run(stop)
    finally:
        server.close()
        logging.shutdown()
    return 0


def main() -> None:
    sys.exit(run_cli(_main))


if __name__ == "__main__":
    main()
