"""`python -m replay` / `distdqn-replay`: run the replay server until SIGINT/SIGTERM.

With `--run-dir` it can snapshot its buffer to RUN_DIR/replay/, and `--restore` starts from the newest
snapshot there, so a replay server that crashed comes back with the transitions it had.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from common.cli import config_from_args, config_parser
from common.envs import env_spec
from common.process import install_stop_handlers, run_cli, setup_logging
from common.run_dir import check_run_dir
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
    args = parser.parse_args()
    config = config_from_args(args)
    if args.run_dir is not None:
        check_run_dir(Path(args.run_dir))
    setup_logging("replay", verbose=args.verbose)
    check_libzmq()
    stop = install_stop_handlers()
    from replay.server import ReplayServer

    server = ReplayServer(config, env_spec(config.env), run_dir=args.run_dir, restore=args.restore)
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
