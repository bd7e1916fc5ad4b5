"""`python -m learner` with the benchmark's clock on it: each publication's start and the control thread's id.

Why a wrapper, not a log line: publish -> applied is measured from the moment the update loop hands a
version over (before any copy), as `weights_latency.py` measures it, and the control thread's CPU time
needs its kernel thread id (Python 3.11 does not name threads for the kernel). Both are appended to
the file named by DISTDQN_BENCH_STAMPS: `v VERSION MONOTONIC_NS` per publication, `control_tid TID` once.
The learner itself runs unchanged.
"""

from __future__ import annotations

import os
import runpy
import threading
import time

from learner.control import ControlServer

_out = open(os.environ["DISTDQN_BENCH_STAMPS"], "a", buffering=1)  # noqa: SIM115  # open for the process's life
_set_weights = ControlServer.set_weights
_run = ControlServer.run


def set_weights(self: ControlServer, version: int, arrays, *, live: bool = False) -> None:  # noqa: ANN001
    _out.write(f"v {version} {time.monotonic_ns()}\n")
    _set_weights(self, version, arrays, live=live)


def run(self: ControlServer) -> None:
    _out.write(f"control_tid {threading.get_native_id()}\n")
    _run(self)


ControlServer.set_weights = set_weights  # type: ignore[method-assign]
ControlServer.run = run  # type: ignore[method-assign]

if __name__ == "__main__":
    runpy.run_module("learner", run_name="__main__", alter_sys=True)
