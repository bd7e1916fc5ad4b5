"""The learner's run log: metrics.jsonl (one JSON object a line) mirrored as TensorBoard scalars."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# metrics.jsonl key -> TensorBoard tag; namespaced so related curves group together.
TB_TAGS = {
    "env_steps_per_s": "charts/env_steps_per_s",
    "updates_per_s": "charts/updates_per_s",
    "train_return_mean": "charts/train_return_mean",
    "eval_return_mean": "charts/eval_return_mean",
    "learner_updates": "charts/learner_updates",
    "loss": "losses/td_loss",
    "q_mean": "losses/q_mean",
    "lr": "losses/lr",
    "replay_size": "replay/size",
    "replay_insert_per_s": "replay/insert_per_s",
    "replay_sample_per_s": "replay/sample_per_s",
    "samples_per_insert": "replay/samples_per_insert",
    "replay_rejected": "replay/rejected",
    "replay_dropped": "replay/dropped",
    "replay_lost": "replay/lost",
    "learner_wait_fraction": "charts/learner_wait_fraction",
    "weight_version": "actors/weight_version",
    "actor_version_lag": "actors/version_lag",
    "actors_alive": "actors/alive",
    "messages_rejected": "actors/messages_rejected",
    "learner_unauthenticated": "actors/unauthenticated",
}


class RunLog:
    """Appends rows to RUN_DIR/metrics.jsonl and RUN_DIR/tb; each row is flushed at once so a
    monitor (or a crash) sees everything written so far."""

    def __init__(self, run_dir: Path, *, tensorboard: bool = True) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / "metrics.jsonl"
        self._file = self.path.open("a", buffering=1)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(run_dir / "tb"), flush_secs=10)
            except ImportError as err:  # the run log alone is still complete
                log.warning("TensorBoard scalars disabled: %s", err)

    def write(self, row: dict[str, Any]) -> None:
        clean = {k: _jsonable(v) for k, v in row.items() if v is not None}
        self._file.write(json.dumps(clean, separators=(",", ":")) + "\n")
        if self._tb is not None:
            step = int(clean.get("env_steps", 0))
            for key, tag in TB_TAGS.items():
                value = clean.get(key)
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tb.add_scalar(tag, value, step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    return value


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """Complete rows of a metrics.jsonl; a missing file or a half-written last line is not an error."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    rows = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows
