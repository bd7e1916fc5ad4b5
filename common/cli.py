"""Flags shared by the server entry points, so every process reads a run's config the same way."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from common.config import DEFAULT_PRESET, RunConfig, load_config
from common.errors import ConfigError


class _Parser(argparse.ArgumentParser):
    """argparse, but a wrong flag is a ConfigError: one line, exit code 2, no usage dump; the epilog
    (examples) keeps its lines."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"{message} (see {self.prog} --help)")


def config_parser(prog: str, description: str, examples: str = "") -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=description, epilog=f"examples:\n{examples}" if examples else None)
    parser.add_argument("--preset", default=DEFAULT_PRESET, help="preset name from configs/ or a TOML file")
    parser.add_argument("--seed", type=int, default=None, help="run seed (overrides the preset's)")
    parser.add_argument("--port-base", type=int, default=None, help="use four consecutive ports from this one")
    parser.add_argument("--run-dir", type=Path, default=None, help="directory for logs, metrics and checkpoints")
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "overrides", nargs="*", metavar="SECTION.KEY=VALUE", help="config overrides, e.g. learner.lr=5e-4"
    )
    return parser


def config_from_args(args: argparse.Namespace) -> RunConfig:
    config = load_config(args.preset, args.overrides)
    if args.seed is not None:
        if not 0 <= args.seed < 2**31:
            raise ConfigError(f"--seed: must be in [0, 2**31), got {args.seed}")
        config = dataclasses.replace(config, seed=args.seed)
    if args.port_base is not None:
        config = dataclasses.replace(config, net=config.net.with_port_base(args.port_base))
    return config
