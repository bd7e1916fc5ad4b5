"""What the operator's commands share: a parser whose errors are one line, and how a run directory is named."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn


class Parser(argparse.ArgumentParser):
    """argparse with the examples kept as written, and a wrong option as one `error:` line, exit code 2."""

    def __init__(self, prog: str, description: str, examples: str) -> None:
        super().__init__(
            prog=prog,
            description=description,
            epilog=f"examples:\n{examples}",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(2)


def directory(text: str) -> Path:
    """An argparse type: an existing directory (a run that is starting may hold nothing else yet)."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return path


def run_dir(text: str) -> Path:
    """An argparse type: a directory that a run wrote (it has a config.toml or a metrics.jsonl)."""
    path = directory(text)
    if not (path / "metrics.jsonl").exists() and not (path / "config.toml").exists():
        raise argparse.ArgumentTypeError(f"{text} is not a run directory (no metrics.jsonl or config.toml)")
    return path
