"""`python -m common.check_config [--print KEY] --preset P [overrides]`: validate a config, one line on error.

The launcher runs this before starting anything, so a bad value stops the launch with one clear line
instead of several processes failing at once.
"""

from __future__ import annotations

import sys

from common.cli import config_from_args, config_parser
from common.envs import check_env_id
from common.process import run_cli


def _main() -> int:
    parser = config_parser("distdqn-check-config", "Validate a preset plus overrides.")
    parser.add_argument(
        "--print", dest="keys", action="append", default=[], help="print a resolved value, e.g. net.learner_port"
    )
    args = parser.parse_args()
    config = config_from_args(args)
    problem = check_env_id(config.env.id)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    for key in args.keys:
        value: object = config.to_dict()
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                print(f"error: no setting {key!r}", file=sys.stderr)
                return 2
            value = value[part]
        print(value)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(_main))
