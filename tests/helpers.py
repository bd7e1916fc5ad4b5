"""Helpers shared by test modules (imported as `tests.helpers`, like `tests.integration.bridge`).

Why a module and not a fixture: the helper is a plain function called many times inside a test body,
with the condition written where it is awaited.
"""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01) -> None:
    """Poll `predicate` until it is truthy; fail the test if `timeout` seconds pass first.

    Servers under test run their loops in threads or processes, so what a test sent is counted a
    moment later: poll for it instead of sleeping a guessed time."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(interval)
