"""`distdqn-monitor RUN_DIR`: a live terminal dashboard of a run, drawn with rich from the run's files.

It reads metrics.jsonl, actors.json, summary.json, config.toml and logs/ (tools/run_files.py) and
redraws at most a few times a second, so it costs the run nothing and works over ssh, on a finished
run, or on another machine with the run directory mounted. `q` or Ctrl-C quits.
"""

from __future__ import annotations

import contextlib
import math
import select
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from tools.cli import Parser, directory
from tools.run_files import RunReader, RunState, age_s

BLOCKS = "▁▂▃▄▅▆▇█"
SILENT_AFTER_S = 5.0
MIN_INTERVAL_S = 0.25  # at most four redraws a second
EXAMPLES = """\
  distdqn-monitor runs/cartpole-s0-20261201-101500
  distdqn-monitor --once runs/cartpole-s0-20261201-101500   # one frame to stdout, e.g. for a log
  scripts/launch_cluster.sh --monitor                       # the launcher shows it instead of progress lines"""


# ---- pieces ------------------------------------------------------------------------------------
def sparkline(xs: Sequence[float], ys: Sequence[float], width: int, x_max: float) -> str:
    """ys against xs over [0, x_max] in `width` cells: the mean of a cell's points, or the line between its
    neighbours where it has none; blank before the first point."""
    if not ys or width <= 0 or x_max <= 0:
        return ""
    x, y = np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    cell = np.clip((x / x_max * width).astype(int), 0, width - 1)
    sums, counts = np.bincount(cell, y, width), np.bincount(cell, minlength=width)
    centers = (np.arange(width) + 0.5) * x_max / width
    values = np.where(counts > 0, sums / np.maximum(counts, 1), np.interp(centers, x, y))
    lo, hi = float(y.min()), float(y.max())
    levels = np.zeros(width, dtype=int) if hi == lo else ((values - lo) / (hi - lo) * len(BLOCKS)).astype(int)
    first = int(cell[0])
    return " " * first + "".join(BLOCKS[min(len(BLOCKS) - 1, level)] for level in levels[first:])


def _num(value: Any, fmt: str = ",.0f", unit: str = "") -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    return f"{value:{fmt}}{unit}"


def _span(values: Sequence[float]) -> str:
    return f"{_num(min(values), '.1f')}..{_num(max(values), '.1f')}" if values else "-"


def _header(s: RunState) -> Panel:
    name, env_id = s.config.get("name", "?"), s.setting("env", "id", "?")
    if s.summary is not None:
        verdict = "SOLVED" if s.summary.get("solved") else "NOT SOLVED"
        status = Text(f"finished: {verdict} ({s.summary.get('reason', '?')})", style="bold green")
    elif s.train or s.evals:
        status = Text(f"running, last row {_num(age_s(s.metrics_mtime), '.1f', ' s')} ago", style="bold yellow")
    else:
        status = Text("waiting for the first metrics row", style="yellow")
    line = Text.assemble((f"{name} ", "bold"), f"{env_id}  ", status)
    return Panel(line, title=f"distdqn {s.run_dir}", title_align="left")


def _curve_rows(label: str, rows: list[dict[str, Any]], key: str, width: int) -> Iterator[tuple[str, ...]]:
    points = [r for r in rows if isinstance(r.get(key), (int, float))]
    if not points:
        yield (label, "-", "", "no data yet")
        return
    ys = [float(r[key]) for r in points]
    for axis, name, fmt in (("env_steps", "env steps", ",.0f"), ("wall_time", "seconds", ".1f")):
        xs = [float(r.get(axis, 0)) for r in points]
        x_max = max(max(xs), 1e-9)
        yield (label, _num(ys[-1], ".1f"), sparkline(xs, ys, width, x_max), f"{name} 0..{_num(x_max, fmt)}")
        label = ""


def _returns(s: RunState, width: int) -> Panel:
    table = Table.grid(padding=(0, 1))
    table.add_column(no_wrap=True, width=12)
    table.add_column(justify="right", no_wrap=True, width=7)
    table.add_column(no_wrap=True)
    table.add_column(no_wrap=True, style="dim")
    spark = max(10, width - 50)
    for row in _curve_rows("eval return", s.evals, "eval_return_mean", spark):
        table.add_row(*row)
    for row in _curve_rows("train return", s.train, "train_return_mean", spark):
        table.add_row(*row)
    evals = [r["eval_return_mean"] for r in s.evals]
    train = [r["train_return_mean"] for r in s.train if isinstance(r.get("train_return_mean"), (int, float))]
    goal = s.setting("stop", "eval_return")
    note = (
        f"eval {_span(evals)} ({len(evals)} evaluations), train {_span(train)}; "
        f"solved at {_num(goal, 'g')} x{s.setting('stop', 'eval_consecutive', '?')} in a row"
    )
    return Panel(Group(table, Text(note, style="dim")), title="returns", title_align="left")


def _throughput(s: RunState) -> Panel:
    r = s.latest
    capacity = s.setting("replay", "capacity")
    rows = [
        ("env steps", _num(r.get("env_steps", s.evals[-1]["env_steps"] if s.evals else None))),
        ("env steps/s", _num(r.get("env_steps_per_s"))),
        ("updates", _num(r.get("learner_updates"))),
        ("updates/s", _num(r.get("updates_per_s"))),
        ("replay size", f"{_num(r.get('replay_size'))} / {_num(capacity)}"),
        ("samples/insert", _num(r.get("samples_per_insert"), ".2f")),
        ("learner wait", _num(100 * r["learner_wait_fraction"], ".1f", "%") if "learner_wait_fraction" in r else "-"),
        ("weight version", _num(r.get("weight_version"))),
        ("loss", _num(r.get("loss"), ".4f")),
        ("wall-clock", _num(r.get("wall_time"), ".1f", " s")),
    ]
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold", no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return Panel(table, title="learner and replay", title_align="left")


def _actor_age(s: RunState, actor: dict[str, Any]) -> float | None:
    """Seconds since the learner last heard from the actor: now, or at the run's end once it is over."""
    written = 0.0 if s.finished else age_s(s.actors.get("written_at"))
    heard = actor.get("last_heard_s")
    return None if written is None or not isinstance(heard, (int, float)) else written + heard


def _actors(s: RunState) -> Panel:
    table = Table(box=None, padding=(0, 1), pad_edge=False, header_style="bold")
    for name in ("actor", "host", "epsilon", "steps/s", "lag", "restarts", "last heard"):
        table.add_column(name, justify="left" if name == "host" else "right", no_wrap=True)
    for a in s.actors.get("actors", []):
        heard = _actor_age(s, a)
        style = "red" if heard is not None and heard > SILENT_AFTER_S and not s.finished else ""
        table.add_row(
            str(a.get("index")),
            str(a.get("host", "?"))[:20],
            _num(a.get("epsilon"), ".3g"),
            _num(a.get("env_steps_per_s")),
            _num(a.get("version_lag")),
            _num(a.get("restarts")),
            _num(heard, ".1f", " s"),
            style=style,
        )
    if not s.actors.get("actors"):
        table.add_row("-", "no actors.json yet", "", "", "", "", "")
    return Panel(table, title=f"actors ({len(s.actors.get('actors', []))})", title_align="left")


def warnings(s: RunState) -> list[str]:
    """Everything an operator should look at, from the metrics, the actors' report and the logs."""
    out = []
    r = s.latest
    if not s.finished:
        for a in s.actors.get("actors", []):
            heard = _actor_age(s, a)
            if heard is not None and heard > SILENT_AFTER_S:
                out.append(f"actor {a.get('index')} silent for {heard:.0f} s")
    for a in s.actors.get("actors", []):
        if a.get("restarts"):
            out.append(f"actor {a.get('index')} restarted {a['restarts']} time(s)")
    for key, what in (
        ("replay_rejected", "messages rejected by replay"),
        ("messages_rejected", "control messages rejected by the learner"),
        ("learner_unauthenticated", "clients refused by CurveZMQ"),
        ("replay_lost", "transitions lost in transit (see replay/accounting.json)"),
    ):
        if r.get(key):
            out.append(f"{_num(r[key])} {what}")
    for role, log in sorted(s.logs.items()):
        if log.starts > 1:
            out.append(f"{role} started {log.starts} times (restarted)")
        if log.tracebacks:
            out.append(f"{role}: {log.tracebacks} traceback(s) in logs/{role}.log")
        problems = log.levels["WARNING"] + log.levels["ERROR"] + log.levels["CRITICAL"]
        if problems:
            out.append(f"{role}: {problems} warning(s)/error(s), last: {log.last_problems[-1][:100]}")
    interval = float(s.config.get("log_interval_s", 5.0))
    stale = age_s(s.metrics_mtime) if s.metrics_mtime else None
    if not s.finished and stale is not None and stale > 3 * interval + 5:
        out.append(f"no metrics row for {stale:.0f} s: is the learner running?")
    return out


def render(s: RunState, width: int) -> Group:
    problems = warnings(s)
    text = Text("\n".join(problems) if problems else "none", style="red" if problems else "green")
    side = Table.grid(padding=(0, 1), expand=True)
    side.add_column(width=38)
    side.add_column(ratio=1)
    side.add_row(_throughput(s), _actors(s))
    footer = Text(f"q quits  ·  read {time.strftime('%H:%M:%S')}", style="dim")
    return Group(_header(s), _returns(s, width), side, Panel(text, title="warnings", title_align="left"), footer)


# ---- the loop ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _keys() -> Iterator[bool]:
    """Single key presses from a terminal (cbreak: Ctrl-C still interrupts); False when stdin is none."""
    if not sys.stdin.isatty():
        yield False
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(timeout: float, keys: bool) -> bool:
    if not keys:
        time.sleep(timeout)
        return False
    ready, _, _ = select.select([sys.stdin], [], [], timeout)
    return bool(ready) and sys.stdin.read(1) in ("q", "Q")


def watch(directory: Path, interval: float, console: Console) -> None:
    reader = RunReader(directory)
    with _keys() as keys, Live(console=console, screen=True, auto_refresh=False, redirect_stderr=False) as live:
        while True:
            live.update(render(reader.refresh(), console.width), refresh=True)
            if _wait_for_quit(interval, keys):
                break
    if not reader.state.finished:
        console.print(f"the run goes on; reopen with: distdqn-monitor {directory}")


def main(argv: list[str] | None = None) -> None:
    parser = Parser("distdqn-monitor", "Live terminal dashboard of a distdqn run, from its files.", EXAMPLES)
    parser.add_argument("run_dir", type=directory, metavar="RUN_DIR", help="the run's directory (it may be starting)")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between redraws (>= 0.25; default 1)")
    parser.add_argument("--once", action="store_true", help="print one frame and exit")
    args = parser.parse_args(argv)
    if not args.interval >= MIN_INTERVAL_S:
        parser.error(f"--interval must be >= {MIN_INTERVAL_S}, got {args.interval}")
    console = Console()
    if args.once:
        console.print(render(RunReader(args.run_dir).refresh(), console.width))
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # leaves the alternate screen on the way out
    try:
        watch(args.run_dir, args.interval, console)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
