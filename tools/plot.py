"""`distdqn-plot RUN_DIR... -o curves.png`: learning curves from metrics.jsonl, drawn with matplotlib.

Two panels: the metric against env steps and against wall-clock seconds. One run is drawn as its own
line; several runs of one preset (same config name and env id, usually different seeds) as their mean
and a band from the lowest to the highest run, each run interpolated onto a common grid that ends
where the shortest run ends, so the mean never silently drops a seed. Evaluation return (the default
metric) also gets the preset's stop threshold.
"""

from __future__ import annotations

import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from common.runlog import read_metrics
from tools.cli import Parser, run_dir
from tools.run_files import read_toml

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DEFAULT_METRIC = "eval_return_mean"
GRID_POINTS = 200
TITLES = {
    "eval_return_mean": "greedy evaluation return (eval_return_mean)",
    "train_return_mean": "training episode return (train_return_mean)",
}
AXES = (("env_steps", "env steps"), ("wall_time", "wall-clock (s)"))
EXAMPLES = """\
  distdqn-plot runs/cartpole-s0-20261201-101500 -o curves.png
  distdqn-plot runs/cartpole-s*-20261201-* -o cartpole.png      # seeds as mean and min-max band
  distdqn-plot runs/cartpole-s0-20261201-101500 --metric updates_per_s -o updates.png"""


@dataclass
class Curve:
    run_dir: Path
    group: str  # "preset (env id)": runs of one group are averaged
    threshold: float | None
    columns: dict[str, np.ndarray]  # env_steps, wall_time, value: the rows that have the metric


def load_curve(directory: Path, metric: str) -> Curve:
    config = read_toml(directory / "config.toml")
    rows = [r for r in read_metrics(directory / "metrics.jsonl") if _is_number(r.get(metric))]
    columns = {
        "env_steps": np.array([float(r.get("env_steps", 0)) for r in rows]),
        "wall_time": np.array([float(r.get("wall_time", 0)) for r in rows]),
        "value": np.array([float(r[metric]) for r in rows]),
    }
    env_id = config.get("env", {}).get("id", "?")
    threshold = config.get("stop", {}).get("eval_return") if metric == DEFAULT_METRIC else None
    return Curve(directory, f"{config.get('name', directory.name)} ({env_id})", threshold, columns)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _draw_group(ax: Axes, curves: list[Curve], axis: str, color: str) -> None:
    begin = max(float(c.columns[axis].min()) for c in curves)
    end = min(float(c.columns[axis].max()) for c in curves)
    if len(curves) == 1 or begin >= end:  # one run, or runs with no span in common: each its own line
        for i, curve in enumerate(curves):
            c, label = curve.columns, f"{curve.group} {curve.run_dir.name}"
            marker = "." if len(c["value"]) < 40 else None
            ax.plot(c[axis], c["value"], color=color, label=label, marker=marker, alpha=1.0 if i == 0 else 0.6)
        return
    grid = np.linspace(begin, end, GRID_POINTS)
    stacked = np.stack([np.interp(grid, c.columns[axis], c.columns["value"]) for c in curves])
    label = f"{curves[0].group}: mean of {len(curves)} runs, band from lowest to highest"
    ax.plot(grid, stacked.mean(axis=0), color=color, label=label)
    ax.fill_between(grid, stacked.min(axis=0), stacked.max(axis=0), color=color, alpha=0.25, linewidth=0)


def make_figure(curves: list[Curve], metric: str) -> Figure:
    """The figure, without pyplot (no global state, no display needed)."""
    from matplotlib.figure import Figure

    groups: dict[str, list[Curve]] = defaultdict(list)
    for curve in curves:
        groups[curve.group].append(curve)
    fig = Figure(figsize=(12, 4.5), dpi=100, layout="constrained")
    colors = [f"C{i}" for i in range(10)]
    thresholds = sorted({c.threshold for c in curves if c.threshold is not None})
    for ax, (axis, xlabel) in zip(fig.subplots(1, 2), AXES, strict=True):
        for i, members in enumerate(groups.values()):
            _draw_group(ax, members, axis, colors[i % len(colors)])
        for threshold in thresholds:
            ax.axhline(threshold, color="grey", linestyle="--", linewidth=1, label=f"stop threshold {threshold:g}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(metric)
        ax.set_xlim(left=0)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize="small")
    title = TITLES.get(metric, metric)
    fig.suptitle(f"{title} ({len(curves)} run{'s' if len(curves) != 1 else ''})")
    return fig


def main(argv: list[str] | None = None) -> None:
    parser = Parser("distdqn-plot", "Learning curves of one or more distdqn runs, as a PNG (or SVG, PDF).", EXAMPLES)
    parser.add_argument("run_dirs", nargs="+", type=run_dir, metavar="RUN_DIR", help="run directories")
    parser.add_argument("-o", "--output", type=Path, default=None, help="image file (default: RUN_DIR/curves.png)")
    parser.add_argument("--metric", default=DEFAULT_METRIC, help=f"a metrics.jsonl column (default {DEFAULT_METRIC})")
    args = parser.parse_args(argv)
    output = args.output or (args.run_dirs[0] / "curves.png" if len(args.run_dirs) == 1 else None)
    if output is None:
        parser.error("several runs need -o/--output")
    curves = [load_curve(d, args.metric) for d in args.run_dirs]
    empty = [str(c.run_dir) for c in curves if not len(c.columns["value"])]
    if len(empty) == len(curves):
        print(f"error: no {args.metric!r} values in {', '.join(empty)}", file=sys.stderr)
        sys.exit(1)
    for name in empty:
        print(f"warning: no {args.metric!r} values in {name}; left out", file=sys.stderr)
    fig = make_figure([c for c in curves if len(c.columns["value"])], args.metric)
    try:
        fig.savefig(output)
    except (OSError, ValueError) as err:
        print(f"error: cannot write {output}: {err}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
