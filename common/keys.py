"""`python -m common.keys` / `distdqn-keygen`: create a CurveZMQ key pair for a server or an actor.

Writes DIR/NAME.key (public, mode 0644: share it) and DIR/NAME.key_secret (mode 0600 from the moment it
exists: never share it) in pyzmq's certificate format. Generate each secret on the machine that uses it,
and copy only public keys around. See docs/security.md for where each file goes.

`distdqn-keygen run DIR` instead makes a whole run's keys in a new private directory (common.run_keys):
what scripts/launch_cluster.sh does before it starts a run's processes.
"""

from __future__ import annotations

import sys
from pathlib import Path

from common.cli import _Parser
from common.process import run_cli
from common.run_keys import make_run_keys
from common.security import generate_keypair


def _main() -> int:
    parser = _Parser(
        prog="distdqn-keygen",
        description="Create a CurveZMQ key pair (NAME.key, NAME.key_secret).",
        epilog="examples:\n"
        "  distdqn-keygen server --dir keys              # the servers' pair, on the learner's machine\n"
        "  distdqn-keygen actor-host-b --dir keys        # an actor host's pair; copy only its .key\n"
        "  distdqn-keygen run runs/x/keys                # a run's keys: every role's pair and the allowlist\n",
    )
    parser.add_argument("name", help="base file name, e.g. 'server' or 'actor-gpu3'; or 'run' to make a run's keys")
    parser.add_argument("run_dir", nargs="?", type=Path, help="with 'run': the new private (0700) key directory")
    parser.add_argument("--dir", type=Path, default=Path("keys"), help="directory for the two files (default: keys)")
    parser.add_argument("--force", action="store_true", help="replace existing files of that name")
    args = parser.parse_args()
    if args.name == "run" and args.run_dir is not None:
        print(f"run keys: {make_run_keys(args.run_dir)}  (mode 0700; set DISTDQN_RUN_KEYS to it for each process)")
        return 0
    if args.run_dir is not None:
        parser.error("a second argument goes only with 'run'")
    public, secret = generate_keypair(args.dir, args.name, force=args.force)
    print(f"public key: {public}  (copy to the servers' authorized directory, or to clients if this is the server)")
    print(f"secret key: {secret}  (mode 0600; keep it on this machine)")
    return 0


def main() -> None:
    sys.exit(run_cli(_main))


if __name__ == "__main__":
    main()
