"""`python -m common.summary RUN_DIR`: the end-of-run summary the launcher prints."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def format_summary(run_dir: Path) -> str:
    s = json.loads((run_dir / "summary.json").read_text())
    verdict = "SOLVED" if s["solved"] else "NOT SOLVED"
    best = s.get("best_eval_return")
    lines = [
        f"{verdict}: {s['reason']} after {s['wall_s']:.1f} s, {s['env_steps']} env steps, "
        f"{s['learner_updates']} learner updates (best eval return {f'{best:.1f}' if best is not None else '-'})",
        f"  metrics:     {run_dir / 'metrics.jsonl'} (TensorBoard: {run_dir / 'tb'})",
        f"  logs:        {run_dir / 'logs'}",
        f"  checkpoint:  {s['checkpoint']}",
        f"  curves:      {run_dir / 'curves.png'} (redraw: distdqn-plot {run_dir} -o FILE [--metric NAME])",
        f"  watch, play: distdqn-monitor {run_dir}; distdqn-evaluate {run_dir} --episodes 10 [--video DIR]",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_summary(Path(sys.argv[1])))
