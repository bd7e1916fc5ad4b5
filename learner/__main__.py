"""`python -m learner` / `distdqn-learner`: train until solved, out of budget, or SIGINT/SIGTERM.

Exit code 0 when the run's stop condition was met (solved), 1 when it ended otherwise.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from common.cli import config_from_args, config_parser
from common.envs import env_spec
from common.process import install_stop_handlers, run_cli, setup_logging
from common.run_dir import check_run_dir
from common.sockets import check_libzmq


def _main() -> int:
    parser = config_parser(
        "distdqn-learner",
        "Learner: trains the Q-network and publishes weights.",
        "  distdqn-learner --preset cartpole --run-dir runs/demo\n"
        "  distdqn-learner --resume --run-dir runs/demo          # continue from runs/demo/checkpoints\n",
    )
    parser.add_argument("--replay-host", default="127.0.0.1", help="host of the replay server's sample port")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints")
    args = parser.parse_args()
    config = config_from_args(args)
    run_dir = args.run_dir or Path("runs") / f"{config.name}-s{config.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    check_run_dir(run_dir)
    setup_logging("learner", verbose=args.verbose)
    check_libzmq()
    stop = install_stop_handlers()
    from learner.learner import Learner

    learner = Learner(config, env_spec(config.env), run_dir, replay_host=args.replay_host)
    if args.resume:
        learner.resume()
    outcome = learner.run(stop)
    logging.shutdown()
    return 0 if outcome.solved else 1


def main() -> None:
    sys.exit(run_cli(_main))


if __name__ == "__main__":
    main()
