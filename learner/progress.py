"""The run's progress as operators see it: a metrics row and a console line every log interval, a line
per evaluation.

The learner hands over what it knows (counters, replay's last stats, the actors' state); this reporter
owns the windows between rows (rates, mean loss, time spent waiting, training returns), and writes each
row to every place it goes: metrics.jsonl and TensorBoard (RunLog), the metrics endpoint, and stdout.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from common.metrics_export import NullExporter
from common.runlog import RunLog


class ProgressReporter:
    def __init__(self, runlog: RunLog, exporter: NullExporter, interval_s: float) -> None:
        self.runlog, self.exporter, self.interval_s = runlog, exporter, interval_s
        self.start = self._row_at = time.monotonic()
        self._row_updates = self._row_steps = 0
        self._losses: list[torch.Tensor] = []  # read back once a row: each read would wait for the GPU
        self._qs: list[torch.Tensor] = []
        self._waited = 0.0
        self._train_returns: list[float] = []

    def begin(self, updates: int, env_steps: int) -> None:
        """Start the clock and the first window (after a resume, at the restored counters)."""
        self.start = self._row_at = time.monotonic()
        self._row_updates, self._row_steps = updates, env_steps

    def elapsed(self, now: float) -> float:
        return now - self.start

    def trained(self, loss: torch.Tensor, q_mean: torch.Tensor) -> None:
        self._losses.append(loss)
        self._qs.append(q_mean)

    def waited(self, seconds: float) -> None:
        self._waited += seconds

    def episodes(self, returns: list[float]) -> None:
        self._train_returns.extend(returns)

    def row_due(self, now: float) -> bool:
        return now - self._row_at >= self.interval_s

    def trained_since_row(self, updates: int) -> bool:
        return updates > self._row_updates

    def row(self, now: float, figures: dict[str, Any]) -> dict[str, Any]:
        """Close the window at `now`: one metrics row (figures plus the window's rates) and one line."""
        span = max(now - self._row_at, 1e-9)
        steps, updates = figures["env_steps"], figures["learner_updates"]
        returns, losses, qs = self._train_returns, self._losses, self._qs
        row = {
            "wall_time": now - self.start,
            "env_steps": steps,
            "learner_updates": updates,
            "env_steps_per_s": (steps - self._row_steps) / span,
            "updates_per_s": (updates - self._row_updates) / span,
            "loss": float(torch.stack(losses).mean()) if losses else None,
            "q_mean": float(torch.stack(qs).mean()) if qs else None,
            **{k: v for k, v in figures.items() if k not in ("env_steps", "learner_updates")},
            "learner_wait_fraction": min(self._waited / span, 1.0),
            "train_return_mean": float(np.mean(returns)) if returns else None,
            "train_episodes": len(returns),
        }
        self.runlog.write(row)
        self.exporter.update(row)
        train = f"{row['train_return_mean']:7.1f}" if returns else "      -"
        print(
            f"train t={row['wall_time']:6.1f}s steps={steps:>8d} ({row['env_steps_per_s']:6.0f}/s) "
            f"updates={updates:>7d} ({row['updates_per_s']:5.0f}/s) replay={row.get('replay_size') or 0:>7} "
            f"return {train} loss {row['loss'] or 0:.3f} actors {row.get('actors_alive', 0)}",
            flush=True,
        )
        self._row_at, self._row_updates, self._row_steps = now, updates, steps
        self._losses, self._qs, self._waited, self._train_returns = [], [], 0.0, []
        return row

    def evaluation(self, now: float, figures: dict[str, Any], returns: np.ndarray, version: int, verdict: str) -> None:
        """One evaluation's row and line; `verdict` says how it counts towards the stop rule."""
        mean = float(returns.mean())
        self.runlog.write(
            {
                "wall_time": now - self.start,
                **figures,
                "eval_return_mean": mean,
                "eval_return_std": float(returns.std()),
                "eval_episodes": len(returns),
                "eval_weight_version": version,
            }
        )
        self.exporter.update({"eval_return_mean": mean, "eval_weight_version": version})
        print(
            f"eval  t={now - self.start:6.1f}s steps={figures['env_steps']:>8d} return {mean:7.1f} "
            f"(weights v{version}, {verdict})",
            flush=True,
        )
