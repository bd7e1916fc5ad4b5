"""RUN_DIR/actors.json: the learner's view of every actor, rewritten with each metrics row.

The monitor reads it to show a table of actors from the run's files alone (it may run on another
machine with the run directory mounted). Times are ages relative to `written_at` (Unix time), so a
reader needs no access to this process's monotonic clock.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from learner.actors import ActorRecord

log = logging.getLogger(__name__)


class ActorsReport:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._previous: dict[int, tuple[float, int]] = {}  # index -> (monotonic time, env steps) last written

    def write(self, records: Iterable[ActorRecord], weight_version: int) -> None:
        now = time.monotonic()
        rows = [self._row(record, now, weight_version) for record in sorted(records, key=lambda r: r.index)]
        report = {"written_at": time.time(), "weight_version": weight_version, "actors": rows}
        tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(report, indent=1) + "\n")
            os.replace(tmp, self.path)  # a reader sees the old file or the new one, never half of one
        except OSError as err:  # a full disk costs the monitor its table, not the run
            log.warning("could not write %s: %s", self.path, err)

    def _row(self, record: ActorRecord, now: float, weight_version: int) -> dict[str, Any]:
        before_t, before_steps = self._previous.get(record.index, (now, record.env_steps))
        span = now - before_t
        rate = (record.env_steps - before_steps) / span if span > 0 and record.env_steps >= before_steps else None
        self._previous[record.index] = (now, record.env_steps)
        return {
            "index": record.index,
            "host": record.host,
            "epsilon": record.epsilon if math.isfinite(record.epsilon) else None,
            "env_steps": record.env_steps,
            "env_steps_per_s": round(rate, 1) if rate is not None else None,
            "transitions_sent": record.transitions_sent,
            "weight_version": record.weight_version,
            "version_lag": weight_version - record.weight_version if record.weight_version >= 0 else None,
            "restarts": record.restarts,
            "last_heard_s": round(now - record.last_seen, 2),
            "silent": record.silent,
        }
