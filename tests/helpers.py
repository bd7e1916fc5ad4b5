"""Helpers shared by test modules (imported as `tests.helpers`, like `tests.integration.bridge`).

Why a module and not a fixture: the helper is a plain function called many times inside a test body,
with the condition written where it is awaited.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll `predicate` until it is truthy; fail the test if `timeout` seconds pass first.

    Servers under test run their loops in threads or processes, so what a test sent is counted a
    moment later: poll for it instead of sleeping a guessed time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(interval)


@contextlib.contextmanager
def serving(server: Any) -> Iterator[Any]:
    """Run a server's loop (`server.run(stop, log_interval_s=...)`) in a thread for the block, then stop
    it, check that its loop ended, and close it."""
    stop = threading.Event()
    thread = threading.Thread(target=server.run, args=(stop,), kwargs={"log_interval_s": 60}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        stop.set()
        thread.join(5)
        server.close()
    assert not thread.is_alive(), "the server's loop did not stop"
