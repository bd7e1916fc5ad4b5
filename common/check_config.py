"""`python -m common.check_config [--print KEY] --preset P [overrides]`: validate a config, one line on error.

The launcher runs this before starting anything, so a bad value stops the launch with one clear line
instead of several processes failing at once.
"""

from __future__ import annotations

import sys

from common.cli import config_from_args, config_parser
from common.process import run_cli


def _main() -> int:
    parser = config_parser("distdqn-check-config", "Validate a preset plus overrides.")
    parser.add_argument("--print", dest="key", default=None, help="print one resolved value, e.g. net.learner_port")
    args = parser.parse_args()
    config = config_from_args(args)
    if args.key:
        value: object = config.to_dict()
        for part in args.key.split("."):
            if not isinstance(value, dict) or part not in value:
                print(f"error: no setting {args.key!r}", file=sys.stderr)
                return 2
            value = value[part]
        print(value)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(_main))
