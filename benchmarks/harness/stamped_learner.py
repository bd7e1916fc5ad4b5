"""`python -m learner` with the benchmark's clock on it: each publication's start, when its full weights
left the control thread, and the control thread's id.

Why a wrapper, not a log line: publish -> applied is measured from the moment the update loop hands a
version over (before any copy), as `weights_latency.py` measures it, and the control thread's CPU time
needs its kernel thread id (Python 3.11 does not name threads for the kernel). Both are appended to
the file named by DISTDQN_BENCH_STAMPS: `v VERSION MONOTONIC_NS` per publication, `sent VERSION
MONOTONIC_NS` when the broadcast was handed to libzmq, `control_tid TID` once.
The learner itself runs unchanged.
"""

from __future__ import annotations

import os
import runpy
import threading
import time

from learner.control import ControlServer
from learner.weight_broadcast import WeightBroadcast

_out = open(os.environ["DISTDQN_BENCH_STAMPS"], "a", buffering=1)  # noqa: SIM115  # open for the process's life
_set_weights = ControlServer.set_weights
_run = ControlServer.run
_publish = WeightBroadcast.publish


def set_weights(self: ControlServer, version: int, arrays, *, live: bool = False) -> None:  # noqa: ANN001
    _out.write(f"v {version} {time.monotonic_ns()}\n")
    _set_weights(self, version, arrays, live=live)


def run(self: ControlServer) -> None:
    _out.write(f"control_tid {threading.get_native_id()}\n")
    _run(self)


def publish(self: WeightBroadcast, version: int, arrays, ref):  # noqa: ANN001, ANN201
    published = _publish(self, version, arrays, ref)
    if published is not None:
        _out.write(f"sent {published[0]} {time.monotonic_ns()}\n")
    return published


WeightBroadcast.publish = publish  # type: ignore[method-assign]
ControlServer.set_weights = set_weights  # type: ignore[method-assign]
ControlServer.run = run  # type: ignore[method-assign]

if __name__ == "__main__":
    runpy.run_module("learner", run_name="__main__", alter_sys=True)
