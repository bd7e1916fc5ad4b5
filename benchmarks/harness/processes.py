"""Child processes that end on any exit, polling with a deadline, shared counters, free ports.

Why: every benchmark starts real processes on free ports and must end them on any exit (Ctrl-C and
SIGTERM included: a leaked pusher would skew the next measurement on a shared machine).

Child processes use the `spawn` start method (a clean interpreter, no forked ZeroMQ state); their start
arguments are plain values (numbers, strings, small frozen dataclasses, events, shared counters) handed
over by multiprocessing's own parent-to-child start-up pipe, and everything measured travels over the
project's wire format, a fixed struct, or shared int64/float64 counters. A spawned child gets its
parent's `sys.path`, so it imports `harness` as the script did.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import multiprocessing as mp
import multiprocessing.synchronize
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import zmq

from harness import BENCH_DIR, REPO_ROOT

MP = mp.get_context("spawn")
STOP_GRACE_S = 5.0
READY_TIMEOUT_S = 60.0

Event = multiprocessing.synchronize.Event


def free_port_base(count: int = 4) -> int:
    """`count` consecutive free loopback ports, below the kernel's ephemeral range where it allows."""
    from common.sockets import free_port_base as find

    return find(count)


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this process when its parent dies: even a SIGKILLed benchmark leaves nothing."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent_pid:  # the parent died before the request took effect
        os._exit(1)


def _spawned(parent_pid: int, target: Callable[..., None], args: tuple[Any, ...]) -> None:
    # The parent owns Ctrl-C (it reaches the whole process group) and stops children in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent(parent_pid)
    target(*args)


def module_main() -> None:
    """Entry of `Children.module`: run `python -m MODULE ARGS` as that command would, with die_with_parent,
    and optionally under cProfile (stats written even when the module calls sys.exit).

    The profile counts the main thread's CPU time, not wall time, so that time spent paused (SIGSTOP)
    or waiting is not charged to whatever function happened to be running; with profile_start
    "sigusr1" it starts at the first SIGUSR1, leaving start-up (imports, joining) out of it."""
    parent_pid, module, profile_path, profile_start, *argv = sys.argv[1:]
    die_with_parent(int(parent_pid))
    import runpy

    sys.argv = [module, *argv]
    if not profile_path:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    import cProfile

    profiler = cProfile.Profile(time.thread_time)
    if profile_start == "sigusr1":
        signal.signal(signal.SIGUSR1, lambda _signum, _frame: profiler.enable())
    else:
        profiler.enable()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        profiler.disable()
        profiler.dump_stats(profile_path)


# Run in the child by `python -c`, whose first path entry is its working directory, the repository root:
# the project's packages come first, as in `python -m MODULE`; `benchmarks/` only supplies `harness`.
_MODULE_CODE = "import sys; sys.path.append(sys.argv.pop(1)); from harness.processes import module_main; module_main()"


@dataclasses.dataclass
class _Child:
    name: str
    process: Any  # multiprocessing Process or subprocess.Popen
    stop: Event | None = None


class Children:
    """Every process a benchmark starts. `close` (run on any exit, see `entry.run_benchmark`) asks each to
    stop, waits a little, then kills what is left, so no run ever leaves CPU-hungry processes behind."""

    def __init__(self, log_dir: Path | None = None) -> None:
        self.children: list[_Child] = []
        self.log_dir = log_dir

    def __enter__(self) -> Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def spawn(self, name: str, target: Callable[..., None], *args: Any, stop: Event | None = None) -> Any:
        """A `spawn` child running `target(*args)`; `stop` is the event its loop watches."""
        process = MP.Process(target=_spawned, args=(os.getpid(), target, args), name=name, daemon=True)
        process.start()
        self.children.append(_Child(name, process, stop))
        return process

    def module(
        self,
        name: str,
        module: str,
        args: Sequence[str],
        *,
        profile_path: str = "",
        profile_start: str = "now",
        prefix: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> subprocess.Popen:
        """`python -m MODULE ARGS` in its own session (a terminal's Ctrl-C reaches only us; we stop it with
        SIGTERM, which distdqn's entry points turn into an orderly shutdown). Output goes to LOG_DIR/NAME.log.
        With `profile_path` it runs under cProfile from the start or, with profile_start="sigusr1", from
        the first SIGUSR1 we send it. `prefix` goes before the interpreter (`ip netns exec NS`: it execs
        the interpreter, which keeps its PID), `env` is added to our environment."""
        argv = [
            *prefix,
            sys.executable,
            "-c",
            _MODULE_CODE,
            str(BENCH_DIR),
            str(os.getpid()),
            module,
            profile_path,
            profile_start,
            *args,
        ]
        log = subprocess.DEVNULL
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log = (self.log_dir / f"{name}.log").open("wb")
        try:
            process = subprocess.Popen(
                argv,
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
                start_new_session=True,
            )
        finally:
            if log is not subprocess.DEVNULL:
                log.close()
        self.children.append(_Child(name, process))
        return process

    def log_tail(self, name: str, lines: int = 20) -> str:
        if self.log_dir is None:
            return ""
        try:
            text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """A child that died is the failure to report, not whatever timeout would follow."""
        for child in self.children:
            code = child.process.exitcode if hasattr(child.process, "exitcode") else child.process.poll()
            if code is not None and code != 0:
                tail = self.log_tail(child.name)
                raise RuntimeError(f"{child.name} exited with status {code}" + (f"\n{tail}" if tail else ""))

    def stop(self, processes: Iterable[Any], grace_s: float = STOP_GRACE_S) -> None:
        """Stop some children: their stop event (or SIGTERM), a bounded wait, then SIGKILL."""
        wanted = {id(p) for p in processes}
        chosen = [c for c in self.children if id(c.process) in wanted]
        for child in chosen:
            _ask_to_stop(child)
        deadline = time.monotonic() + grace_s
        for child in chosen:
            remaining = max(0.0, deadline - time.monotonic())
            if isinstance(child.process, subprocess.Popen):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(timeout=remaining)
            else:
                child.process.join(timeout=remaining)
        for child in chosen:
            _kill_if_running(child)
        self.children = [c for c in self.children if id(c.process) not in wanted]

    def close(self) -> None:
        self.stop([c.process for c in self.children])


def _ask_to_stop(child: _Child) -> None:
    if child.stop is not None:
        child.stop.set()
    elif isinstance(child.process, subprocess.Popen) and child.process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            child.process.send_signal(signal.SIGTERM)


def _kill_if_running(child: _Child) -> None:
    if isinstance(child.process, subprocess.Popen):
        if child.process.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(child.process.pid, signal.SIGKILL)  # its own session: pgid == pid
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.process.wait(timeout=2)
    elif child.process.is_alive():
        child.process.kill()
        child.process.join(timeout=2)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) from /proc: how much of a window it actually ran,
    which on a shared machine tells contention apart from slowness. NaN where /proc is unavailable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return float("nan")
    fields = text[text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, children: Children | None = None) -> Any:
    """Poll until `predicate` is truthy; a dead child or the deadline raises with `what` in the message."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if children is not None:
            children.check_alive()
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def zmq_context() -> Iterator[zmq.Context]:
    """A context destroyed with linger 0: a benchmark's leftover messages are worth nothing at exit."""
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def shared_counters(count: int) -> Any:
    """int64 counters in shared memory: each slot has a single writer, the parent only reads."""
    return MP.RawArray("q", count)


def shared_floats(count: int) -> Any:
    return MP.RawArray("d", count)
