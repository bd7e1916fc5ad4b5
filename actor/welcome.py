"""The learner's `welcome`, read by a joining actor or evaluator: the run's config, its index, its epsilon.

A newer learner may send settings this actor does not know; they are ignored with one warning line
rather than refused, since what an actor does not know it cannot use anyway.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from common.config import RunConfig
from common.safe_log import printable
from common.wire import Message

log = logging.getLogger("actor.link")


@dataclass(frozen=True)
class Welcome:
    config: RunConfig
    actor_index: int
    run_id: str
    epsilon: float | None = None
    """the exploration epsilon the learner chose; None from a learner that does not choose"""


def read_welcome(msg: Message) -> Welcome:
    skipped: list[str] = []
    config = RunConfig.from_dict(msg.meta["config"], skipped=skipped)
    if skipped:
        names = printable(", ".join(skipped[:8]), 200)
        log.warning("the learner's config has settings this actor does not know, ignored: %s", names)
    epsilon = msg.meta.get("epsilon")
    if epsilon is not None and not (math.isfinite(epsilon) and 0 <= epsilon <= 1):
        log.warning("ignored the learner's epsilon %r: not in [0, 1]", epsilon)
        epsilon = None
    return Welcome(config, msg.meta["actor_index"], msg.meta["run_id"], None if epsilon is None else float(epsilon))
