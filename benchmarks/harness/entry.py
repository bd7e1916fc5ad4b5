"""What every benchmark's command line shares, and the signal-safe way to run its `main`.

Why: a benchmark stopped by Ctrl-C, SIGTERM (a test's teardown) or SIGHUP (a closed terminal) must
still stop its children; turning those signals into KeyboardInterrupt makes every `finally` run.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
from collections.abc import Callable, Iterator


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a few seconds only, for smoke tests")
    parser.add_argument("--json", default=None, metavar="PATH", help="result file (default benchmarks/results/)")
    return parser


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so every `finally` (and `Children.close`) runs."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_benchmark(main: Callable[[], int]) -> None:
    """Run `main` with signal-safe cleanup; exit 130 on interruption, like a shell."""
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    try:
        with _terminate_as_interrupt():
            code = main()
    except KeyboardInterrupt:
        print("\ninterrupted; child processes stopped", file=sys.stderr)
        code = 130
    sys.exit(code)
