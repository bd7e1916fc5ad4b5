"""`python -m common.check_config [--print KEY] --preset P [overrides]`: validate a config, one line on error.

The launcher runs this before starting anything, so a bad value stops the launch with one clear line
instead of several processes failing at once. Beyond the config's own checks (common/config.py, which
every process repeats, remote actors included) it checks what only the servers' machine can answer:
that they may listen where told (off loopback only with CurveZMQ, the rule every bind applies), that
the env id can be made (its extra installed, say), that replay's frame ring can hold one message of
its observations (known only once the env is made) and that a CUDA device asked for is there.
"""

from __future__ import annotations

import sys

from common.cli import config_from_args, config_parser
from common.config import RunConfig, check_frame_ring
from common.errors import ConfigError
from common.process import run_cli


def check_machine(config: RunConfig) -> None:
    """ConfigError or StartupError when the servers cannot run the config here: a bind that would be
    refused, an env this machine cannot make, a network that cannot take its observations, a frame ring
    too small for one message of them, a missing CUDA device."""
    from common.envs import check_env_id, env_spec  # late: gymnasium is imported only when checking the machine
    from common.sockets import require_secure_bind

    require_secure_bind(config.net.bind_host, bool(config.net.curve_secret_key))
    problem = check_env_id(config.env.id)  # names the extra to install, where one is missing
    if problem:
        raise ConfigError(problem)
    spec = env_spec(config.env)
    if config.replay.frame_dedup and len(spec.obs_shape) == 3:  # replay stores these frame by frame
        check_frame_ring(config.replay, config.actor.send_size, spec.obs_shape[0])
    if config.network.torso != "mlp":  # a convolution's arithmetic must fit the observations: build it
        from common.networks import QNetwork

        try:
            QNetwork(spec.obs_shape, spec.num_actions, config.network)
        except (ValueError, RuntimeError) as err:
            raise ConfigError(f"network.torso: {config.network.torso} cannot take {config.env.id}: {err}") from None
    if config.learner.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(f"learner.device: {config.learner.device} asked for, but torch sees no CUDA device")


def _main() -> int:
    parser = config_parser(
        "distdqn-check-config",
        "Validate a preset plus overrides.",
        "  python -m common.check_config --preset acrobot learner.lr=1e-3\n"
        "  python -m common.check_config --print net.learner_port --port-base 6000\n",
    )
    parser.add_argument(
        "--print", dest="keys", action="append", default=[], help="print a resolved value, e.g. net.learner_port"
    )
    parser.add_argument("--no-machine-check", action="store_true", help="check the config only (no env made)")
    args = parser.parse_args()
    config = config_from_args(args)
    if not args.no_machine_check:
        check_machine(config)
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
