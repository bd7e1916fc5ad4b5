"""Helpers for integration tests that run real distdqn processes on this machine.

Every process a test starts goes through `Cluster`, which tears the whole process group down even when
the test fails, so one broken run cannot leave CPU-hungry actors behind to slow or break the next test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from common import sockets
from common.runlog import read_metrics

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = REPO_ROOT / "scripts" / "launch_cluster.sh"
SETUP_ENV = REPO_ROOT / "scripts" / "setup_env.sh"
PRESET = "cartpole"
SEED = 0
STOP_GRACE_S = 12.0
T = TypeVar("T")

_used_bases: set[int] = set()


# ---- ports ---------------------------------------------------------------------------------------
def free_port_base(count: int = 4) -> int:
    """A base port with `count` consecutive free ports, different from every base handed out before."""
    base = sockets.free_port_base(count, avoid=_used_bases)
    _used_bases.add(base)
    return base


# ---- processes -----------------------------------------------------------------------------------
def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (which may itself hold spaces and parentheses)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2 :].split()


def process_state(pid: int) -> str | None:
    """One-letter state ('R', 'S', 'Z', ...) or None when no such process exists."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def start_time(pid: int) -> int | None:
    """Start time in clock ticks since boot: tells a process apart from a later one that reuses its PID."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def is_alive(pid: int) -> bool:
    """Zombies count as dead: they run nothing and hold no sockets, they only wait to be reaped."""
    state = process_state(pid)
    return state is not None and state not in ("Z", "X")


def _all_pids() -> list[int]:
    return [int(name) for name in os.listdir("/proc") if name.isdigit()]


def descendants(pid: int) -> list[int]:
    """PIDs of all live descendants of `pid` (children, grandchildren, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for other in _all_pids():
        fields = _stat_fields(other)
        if fields is not None and fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append(other)
    found: list[int] = []
    queue = list(children.get(pid, []))
    while queue:
        child = queue.pop()
        found.append(child)
        queue.extend(children.get(child, []))
    return sorted(found)


def command_line(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def leftover_processes(marker: str) -> dict[int, str]:
    """Live processes (other than this one) whose command line contains `marker`, e.g. a run directory."""
    me = os.getpid()
    found = {}
    for pid in _all_pids():
        if pid == me or not is_alive(pid):
            continue
        cmd = command_line(pid)
        if marker in cmd:
            found[pid] = cmd
    return found


def wait_until(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.2) -> T | None:
    """Poll `predicate` until it returns something truthy (returned) or the deadline passes (None)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval_s)


# ---- run output ----------------------------------------------------------------------------------
def tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(missing)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty)"


class Cluster:
    """Starts distdqn processes for one test, each in its own session, and always stops them all."""

    def __init__(self, tmp_path: Path, port_base: int) -> None:
        self.tmp_path = tmp_path
        self.port_base = port_base
        self.run_dir = tmp_path / "run"
        self.out_dir = tmp_path / "out"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._known: dict[int, int | None] = {}  # pid -> start time, for every descendant ever seen
        self.env = dict(os.environ, PYTHONUNBUFFERED="1")

    # ---- starting ----------------------------------------------------------------------------
    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Run `argv` from the repo root, stdout/stderr to out/NAME.out and out/NAME.log."""
        assert name not in self.procs, f"{name} already started"
        with self.stdout_path(name).open("wb") as out, self.log_path(name).open("wb") as err:
            proc = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.env,
                start_new_session=True,
            )
        self.procs[name] = proc
        return proc

    def server_args(self, *overrides: str) -> list[str]:
        return [
            "--preset",
            PRESET,
            "--seed",
            str(SEED),
            "--port-base",
            str(self.port_base),
            "--run-dir",
            str(self.run_dir),
            *overrides,
        ]

    def start_replay(self, *overrides: str) -> subprocess.Popen[bytes]:
        return self.start("replay", [sys.executable, "-m", "replay", *self.server_args(*overrides)])

    def start_learner(self, *overrides: str) -> subprocess.Popen[bytes]:
        return self.start("learner", [sys.executable, "-m", "learner", *self.server_args(*overrides)])

    def start_actor(self, index: int, *flags: str) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "actor", "--learner", self.learner_address, "--actor-index", str(index)]
        return self.start(f"actor-{index}", [*argv, *flags])

    def start_launcher(self, *args: str, name: str = "launcher") -> subprocess.Popen[bytes]:
        return self.start(name, [str(LAUNCHER), *args])

    @property
    def learner_address(self) -> str:
        return f"127.0.0.1:{self.port_base}"

    # ---- output ------------------------------------------------------------------------------
    def stdout_path(self, name: str) -> Path:
        return self.out_dir / f"{name}.out"

    def log_path(self, name: str) -> Path:
        return self.out_dir / f"{name}.log"

    def stdout(self, name: str) -> str:
        return self.stdout_path(name).read_text(errors="replace")

    def log(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")

    def metrics(self) -> list[dict[str, Any]]:
        return read_metrics(self.run_dir / "metrics.jsonl")

    def diagnostics(self, lines: int = 25) -> str:
        """Tails of every output file and role log, for assertion messages."""
        parts = []
        files = sorted(self.out_dir.glob("*")) + sorted((self.run_dir / "logs").glob("*.log"))
        for path in files:
            parts.append(f"--- {path.relative_to(self.tmp_path)} ---\n{tail(path, lines)}")
        return "\n".join(parts)

    # ---- processes ---------------------------------------------------------------------------
    # The module's helpers, reachable from test modules (conftest is not importable under importlib mode).
    descendants = staticmethod(descendants)
    is_alive = staticmethod(is_alive)
    leftover_processes = staticmethod(leftover_processes)
    command_line = staticmethod(command_line)
    wait_until = staticmethod(wait_until)

    def remember_descendants(self) -> list[int]:
        """Note every live descendant now, so teardown can still find those orphaned since."""
        found = []
        for proc in self.procs.values():
            for pid in descendants(proc.pid):
                self._known.setdefault(pid, start_time(pid))
                found.append(pid)
        return sorted(found)

    def wait_exit(self, name: str, timeout_s: float) -> int | None:
        try:
            return self.procs[name].wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def teardown(self) -> None:
        """SIGTERM each leader, wait, then SIGKILL each process group and any descendant seen before."""
        self.remember_descendants()
        for proc in self.procs.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # the leader's PID is its group's id (new session)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for pid, started in self._known.items():
            if is_alive(pid) and start_time(pid) == started:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        # SIGKILL is asynchronous: wait (bounded) so the next test starts on a quiet machine.
        wait_until(lambda: not any(is_alive(pid) for pid in self._known), timeout_s=5.0, interval_s=0.05)


@pytest.fixture(scope="session", autouse=True)
def _environment_ready() -> None:
    """Run the launcher's set-up step once, first: a reinstall (pyproject.toml changed) then prints its
    notes here, not in the middle of a test that checks exactly what the launcher prints."""
    try:
        result = subprocess.run(
            [str(SETUP_ENV)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{SETUP_ENV} did not finish within 600 s")
    if result.returncode != 0:
        pytest.fail(f"{SETUP_ENV} failed ({result.returncode}):\n{result.stderr[-2000:]}")


@pytest.fixture
def port_base() -> int:
    return free_port_base()


@pytest.fixture
def cluster(tmp_path: Path, port_base: int) -> Iterator[Cluster]:
    c = Cluster(tmp_path, port_base)
    try:
        yield c
    finally:
        c.teardown()
