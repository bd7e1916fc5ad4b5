"""`python -m actor.relay` with the benchmark's clock on it: when each version reached it and when its
notice went out.

Why: publish -> applied over relays is three hops (the learner's send, CURVE and the network, the
relay's file write, then each actor's take), and the benchmark reports where the time goes. Each new
version appends `r VERSION RECEIVED_NS NOTICE_NS` (CLOCK_MONOTONIC, one clock for every network
namespace) to the file named by DISTDQN_BENCH_STAMPS. The relay itself runs unchanged.
"""

from __future__ import annotations

import os
import time

from actor import relay
from actor.relay import WeightRelay

_out = open(os.environ["DISTDQN_BENCH_STAMPS"], "a", buffering=1)  # noqa: SIM115  # open for the process's life
_take = WeightRelay._take


def _stamped_take(self: WeightRelay, msg) -> None:  # noqa: ANN001
    received, before = time.monotonic_ns(), (self.run_id, self.version)
    _take(self, msg)
    if (self.run_id, self.version) != before:
        _out.write(f"r {self.version} {received} {time.monotonic_ns()}\n")


WeightRelay._take = _stamped_take  # type: ignore[method-assign]

if __name__ == "__main__":
    relay.main()  # not runpy: a fresh run of the module would define a WeightRelay of its own, unstamped
