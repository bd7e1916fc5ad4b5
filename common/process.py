"""What every long-running distdqn process does the same way: logging, signals, seeding, CLI errors."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from collections.abc import Callable

import numpy as np

from common.errors import ConfigError, StartupError

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(role: str, *, verbose: bool = False) -> None:
    """Log to stderr, tagged with the role; the launcher sends each process's stderr to RUN_DIR/logs/ROLE.log,
    which then also holds any traceback a crash prints."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"[{role}] {LOG_FORMAT}",
        stream=sys.stderr,
        force=True,
    )


def install_stop_handlers() -> threading.Event:
    """SIGINT/SIGTERM set an event that the main loop polls; the loop then closes down in order.

    A second signal while shutting down exits at once, so a stuck peer can never hold a process hostage.
    """
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        if stop.is_set():
            logging.getLogger(__name__).warning("second %s: exiting now", signal.Signals(signum).name)
            raise SystemExit(128 + signum)
        stop.set()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return stop


def derive_seed(seed: int, *stream: int) -> int:
    """Independent, reproducible seeds per process and purpose from the run's one seed."""
    return int(np.random.SeedSequence([seed, *stream]).generate_state(1)[0])


def run_cli(main: Callable[[], int]) -> int:
    """Entry-point wrapper: a bad config or flag is one clear line on stderr and exit code 2."""
    try:
        return main()
    except (ConfigError, StartupError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
