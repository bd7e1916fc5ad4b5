"""A run directory read from its files alone, incrementally, as a run writes them (see README's
"What a run leaves behind"). Only files: the monitor works over ssh or on another machine with the
run directory mounted, and never talks to a process of the run.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# A line each process logs once per start, so a second one in a log means the process was restarted.
START_MARKERS = {
    "replay": "serving: ingest",
    "learner": "learning on ",
    "actor": "joined run ",
    "evaluator": "joined run ",
}
LOG_LEVEL = re.compile(r"\] \S+ \S+ (WARNING|ERROR|CRITICAL) ")
READ_CHUNK = 1 << 20


class JsonLines:
    """Rows of a JSON-lines file appended by another process; a half-written last line waits for its end."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                if f.seek(0, 2) < self._offset:  # replaced by a shorter file: start over
                    self._offset, self._partial = 0, b""
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        rows = []
        for line in lines:
            try:
                row = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(row, dict):
                rows.append(row)
        return rows


@dataclass
class LogStats:
    """What the monitor wants from one process's log: how often it started, and its warnings."""

    role: str
    starts: int = 0
    levels: Counter[str] = field(default_factory=Counter)
    tracebacks: int = 0
    last_problems: deque[str] = field(default_factory=lambda: deque(maxlen=3))
    offset: int = 0
    partial: str = ""

    def read_new(self, path: Path) -> None:
        try:
            with path.open("rb") as f:
                f.seek(self.offset)
                data = f.read(READ_CHUNK * 16)
        except OSError:
            return
        self.offset += len(data)
        lines = (self.partial + data.decode("utf-8", "replace")).split("\n")
        self.partial = lines.pop()
        marker = START_MARKERS.get(self.role.split("-")[0], "\0")
        for line in lines:
            if marker in line:
                self.starts += 1
            if line.startswith("Traceback"):
                self.tracebacks += 1
                self.last_problems.append(line)
            level = LOG_LEVEL.search(line)
            if level:
                self.levels[level.group(1)] += 1
                self.last_problems.append(line[level.end() :].strip())


@dataclass
class RunState:
    """Everything the monitor shows, rebuilt from the files on each refresh."""

    run_dir: Path
    config: dict[str, Any] = field(default_factory=dict)
    train: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)
    actors: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] | None = None
    logs: dict[str, LogStats] = field(default_factory=dict)
    metrics_mtime: float = 0.0

    @property
    def latest(self) -> dict[str, Any]:
        return self.train[-1] if self.train else {}

    @property
    def finished(self) -> bool:
        return self.summary is not None

    def setting(self, section: str, key: str, default: Any = None) -> Any:
        value = self.config.get(section, {})
        return value.get(key, default) if isinstance(value, dict) else default


class RunReader:
    def __init__(self, run_dir: Path) -> None:
        self.state = RunState(run_dir)
        self._metrics = JsonLines(run_dir / "metrics.jsonl")

    def refresh(self) -> RunState:
        s, run_dir = self.state, self.state.run_dir
        if not s.config:
            s.config = read_toml(run_dir / "config.toml")
        for row in self._metrics.read_new():
            (s.evals if "eval_return_mean" in row else s.train).append(row)
        s.metrics_mtime = _mtime(run_dir / "metrics.jsonl")
        s.actors = read_json(run_dir / "actors.json") or {}
        summary = read_json(run_dir / "summary.json")
        # A summary older than the metrics is a previous run's, in a directory since resumed.
        fresh = summary is not None and _mtime(run_dir / "summary.json") >= s.metrics_mtime - 1.0
        s.summary = summary if fresh else None
        for path in sorted((run_dir / "logs").glob("*.log")):
            s.logs.setdefault(path.stem, LogStats(path.stem)).read_new(path)
        return s


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}


def age_s(written_at: float | None, now: float | None = None) -> float | None:
    return None if written_at is None else max(0.0, (now or time.time()) - written_at)
