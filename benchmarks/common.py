"""Shared plumbing for the benchmark scripts: ports, child processes, synthetic traffic, statistics, results.

Why one module: every benchmark starts real processes on free ports and must end them on any exit
(Ctrl-C and SIGTERM included: a leaked pusher would skew the next measurement on a shared machine),
and every result must carry medians, the machine it ran on and how loaded that machine was, the same
way, so that numbers are only ever compared with a peer measured in the same run.

Scripts run as files (`python benchmarks/NAME.py`), so each one puts the repository root first on
`sys.path` itself: otherwise this file, `benchmarks/common.py`, would shadow the project's `common`
package. Child processes use the `spawn` start method (a clean interpreter, no forked ZeroMQ state);
their start arguments are plain values (numbers, strings, small frozen dataclasses, events, shared
counters) handed over by multiprocessing's own parent-to-child start-up pipe, and everything measured
travels over the project's wire format, a fixed struct, or shared int64/float64 counters.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import datetime as dt
import importlib.metadata
import json
import multiprocessing as mp
import multiprocessing.synchronize
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
MP = mp.get_context("spawn")
STOP_GRACE_S = 5.0
READY_TIMEOUT_S = 60.0

Event = multiprocessing.synchronize.Event


# ---- ports -----------------------------------------------------------------------------------------
def free_port_base(count: int = 4) -> int:
    """`count` consecutive free loopback ports, below the kernel's ephemeral range where it allows."""
    from common.sockets import free_port_base as find  # the project's package, not this file

    return find(count)


# ---- child processes -------------------------------------------------------------------------------
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


@dataclasses.dataclass
class _Child:
    name: str
    process: Any  # multiprocessing Process or subprocess.Popen
    stop: Event | None = None


class Children:
    """Every process a benchmark starts. `close` (run on any exit, see `run_benchmark`) asks each to stop,
    waits a little, then kills what is left, so no run ever leaves CPU-hungry processes behind."""

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
        self, name: str, module: str, args: Sequence[str], *, profile_path: str = "", profile_start: str = "now"
    ) -> subprocess.Popen:
        """`python -m MODULE ARGS` in its own session (a terminal's Ctrl-C reaches only us; we stop it with
        SIGTERM, which distdqn's entry points turn into an orderly shutdown). Output goes to LOG_DIR/NAME.log.
        With `profile_path` it runs under cProfile from the start or, with profile_start="sigusr1", from
        the first SIGUSR1 we send it."""
        code = (
            "import sys; sys.path.insert(0, sys.argv.pop(1)); from benchmarks.common import module_main; module_main()"
        )
        argv = [
            sys.executable,
            "-c",
            code,
            str(REPO_ROOT),
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
                env=dict(os.environ, PYTHONUNBUFFERED="1"),
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
            if child.stop is not None:
                child.stop.set()
            elif isinstance(child.process, subprocess.Popen) and child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
                    child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for child in chosen:
            remaining = max(0.0, deadline - time.monotonic())
            if isinstance(child.process, subprocess.Popen):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(timeout=remaining)
            else:
                child.process.join(timeout=remaining)
        for child in chosen:
            if isinstance(child.process, subprocess.Popen):
                if child.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(child.process.pid, signal.SIGKILL)  # its own session: pgid == pid
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.process.wait(timeout=2)
            elif child.process.is_alive():
                child.process.kill()
                child.process.join(timeout=2)
        self.children = [c for c in self.children if id(c.process) not in wanted]

    def close(self) -> None:
        self.stop([c.process for c in self.children])


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


# ---- configuration ---------------------------------------------------------------------------------
def run_config(port_base: int, overrides: Sequence[str], preset: str = "cartpole") -> Any:
    """The run config every process of one benchmark shares: a preset, overrides, and our ports."""
    from common.config import load_config

    config = load_config(preset, overrides)
    return dataclasses.replace(config, net=config.net.with_port_base(port_base))


@dataclasses.dataclass(frozen=True)
class Shape:
    """An environment's observation and action space, as plain values (they cross to spawned children)."""

    name: str
    obs_shape: tuple[int, ...]
    obs_dtype: str
    num_actions: int

    def env_spec(self) -> Any:
        from common.envs import EnvSpec

        return EnvSpec(self.obs_shape, np.dtype(self.obs_dtype), self.num_actions)

    @property
    def transition_bytes(self) -> int:
        """Bytes of one `transitions` row on the wire: obs, next_obs, action, reward, discount, priority, version."""
        obs = int(np.prod(self.obs_shape)) * np.dtype(self.obs_dtype).itemsize
        return 2 * obs + 8 + 4 + 4 + 4 + 8


CARTPOLE = Shape("cartpole", (4,), "float32", 2)
ATARI = Shape("atari", (4, 84, 84), "uint8", 6)
SHAPES = {"cartpole": CARTPOLE, "atari": ATARI}


# ---- synthetic traffic -----------------------------------------------------------------------------
def transitions_arrays(shape: Shape, count: int, seed: int) -> dict[str, np.ndarray]:
    """`count` valid random transitions (what an actor would send), so the server's checks all pass."""
    rng = np.random.default_rng(seed)
    full = (count, *shape.obs_shape)
    if np.dtype(shape.obs_dtype) == np.uint8:
        obs = rng.integers(0, 256, full, dtype=np.uint8)
        next_obs = rng.integers(0, 256, full, dtype=np.uint8)
    else:
        obs = rng.standard_normal(full).astype(shape.obs_dtype)
        next_obs = rng.standard_normal(full).astype(shape.obs_dtype)
    return {
        "obs": obs,
        "action": rng.integers(0, shape.num_actions, count, dtype=np.int64),
        "reward": rng.standard_normal(count).astype(np.float32),
        "discount": np.full(count, 0.99**3, dtype=np.float32),
        "next_obs": next_obs,
        "priority": np.abs(rng.standard_normal(count)).astype(np.float32) + 0.01,
        "version": np.zeros(count, dtype=np.int64),
    }


STREAM_MESSAGES = 32  # distinct messages a pusher cycles through: more frames than replay's reuse window


def frame_stream_arrays(
    shape: Shape, count: int, seed: int, messages: int = 1, envs: int = 4, n_step: int = 3
) -> list[dict[str, np.ndarray]]:
    """`messages` consecutive messages of `count` stacked-frame transitions each, as an actor with
    `envs` environments sends them: the stacks of each env overlap (one new frame a step), `next_obs`
    is the stack `n_step` steps later, and each message continues where the previous one stopped, so
    frame deduplication, in the message and across messages in replay, saves what it saves in a real
    run (no episode ends: slightly optimistic)."""
    rng = np.random.default_rng(seed)
    stack, frame_shape = shape.obs_shape[0], shape.obs_shape[1:]
    per_env = -(-count // envs)
    steps = messages * per_env
    stacks = []
    for _ in range(envs):
        frames = rng.integers(0, 256, (steps + stack + n_step, *frame_shape), dtype=np.uint8)
        stacks.append(np.stack([frames[t : t + stack] for t in range(steps + n_step)]))
    out = []
    for m in range(messages):
        window = slice(m * per_env, (m + 1) * per_env)
        later = slice(m * per_env + n_step, (m + 1) * per_env + n_step)
        arrays = transitions_arrays(Shape(shape.name, (1,), "float32", shape.num_actions), count, seed + m)
        arrays["obs"] = np.concatenate([s[window] for s in stacks])[:count]
        arrays["next_obs"] = np.concatenate([s[later] for s in stacks])[:count]
        out.append(arrays)
    return out


def transitions_frames(shape: Shape, count: int, actor_index: int, seed: int, messages: int = 1) -> list[list[Any]]:
    """Ingest messages as the reference actor sends them (`frame_transitions` for stacked frames):
    one for vector observations, `messages` consecutive ones of a stream for stacked frames."""
    from common.frame_dedup import dedup_stacks
    from common.wire import encode

    sender = f"bench-pusher-{actor_index}"
    if len(shape.obs_shape) != 3:
        arrays = transitions_arrays(shape, count, seed)
        return [encode("transitions", {"actor_index": actor_index}, arrays, sender=sender, seq=1)]
    out = []
    for arrays in frame_stream_arrays(shape, count, seed, messages):
        arrays["frames"], arrays["obs_frames"], arrays["next_obs_frames"] = dedup_stacks(
            arrays.pop("obs"), arrays.pop("next_obs")
        )
        out.append(encode("frame_transitions", {"actor_index": actor_index}, arrays, sender=sender, seq=1))
    return out


def frames_bytes(frames: Sequence[Any]) -> int:
    return sum(memoryview(f).nbytes for f in frames)


def pusher_main(
    index: int,
    port: int,
    shape: Shape,
    send_size: int,
    send_hwm: int,
    rate: Any,
    sent: Any,
    stop: Event,
    limit: int,
) -> None:
    """Re-send prebuilt ingest messages (one, or a stream of STREAM_MESSAGES for stacked frames, in a
    cycle) over a PUSH socket made like an actor's.

    `rate[0]` is this pusher's target in transitions/s (0: as fast as the receiver takes them) and may
    change while running; `sent[index]` counts transitions handed to ZeroMQ; `limit` > 0 stops after
    that many. Building the messages once keeps the pusher's own cost out of the measurement.
    """
    from common.sockets import BULK_KERNEL_BUFFER, connect, make_socket

    stream = transitions_frames(shape, send_size, index, seed=1000 + index, messages=STREAM_MESSAGES)
    position = 0
    ctx = zmq.Context()
    push = make_socket(ctx, zmq.PUSH, hwm=send_hwm, kernel_buffer_bytes=BULK_KERNEL_BUFFER, heartbeats=False)
    connect(push, "127.0.0.1", port)
    next_send: float | None = None
    try:
        while not stop.is_set() and not (limit and sent[index] >= limit):
            target = rate[0]
            if target > 0:
                now = time.monotonic()
                if next_send is None or now - next_send > 1.0:
                    next_send = now  # (re)start the schedule without a catch-up burst
                if next_send > now:
                    time.sleep(min(next_send - now, 0.05))
                    continue
                next_send += send_size / target
            else:
                next_send = None
            if push.poll(100, zmq.POLLOUT):
                push.send_multipart(stream[position % len(stream)], copy=False)
                position += 1
                sent[index] += send_size
    finally:
        # A bounded fill must arrive whole; an endless stream's queued tail is worth nothing.
        push.close(linger=5000 if limit else 0)
        ctx.term()


def replay_server_main(
    port_base: int, overrides: list[str], shape: Shape, stop: Event, ready: Event, profile_path: str
) -> None:
    """The real ReplayServer for an arbitrary observation shape (`python -m replay` needs a real env id,
    and Atari ones are not installed), optionally under cProfile."""
    from replay.server import ReplayServer

    server = ReplayServer(run_config(port_base, overrides), shape.env_spec())
    ready.set()
    profiler = None
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    try:
        server.run(stop, log_interval_s=3600.0)
    finally:
        if profiler is not None:
            profiler.disable()
            profiler.dump_stats(profile_path)
        server.close()


def start_replay_server(
    children: Children, port_base: int, overrides: list[str], shape: Shape, profile_path: str = ""
) -> Any:
    stop, ready = MP.Event(), MP.Event()
    process = children.spawn(
        "replay", replay_server_main, port_base, overrides, shape, stop, ready, profile_path, stop=stop
    )
    wait_for(ready.is_set, READY_TIMEOUT_S, "the replay server to bind", children)
    return process


class ReplayProbe:
    """Reads the replay server's counters with `stats_request`, as any operator tool would."""

    def __init__(self, ctx: zmq.Context, port: int) -> None:
        from common.sockets import connect, make_socket
        from common.wire import Encoder

        self.sock = make_socket(ctx, zmq.DEALER, hwm=64)
        connect(self.sock, "127.0.0.1", port)
        self.encode = Encoder("bench-probe")

    def stats(self, timeout_s: float = 10.0) -> dict[str, Any]:
        """The server's `replay_stats` meta, plus `t`: when the answer arrived (time.monotonic)."""
        from common.wire import DecodeError, decode

        self.sock.send_multipart(self.encode("stats_request"))
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            frames = self.sock.recv_multipart(copy=False)
            with contextlib.suppress(DecodeError):
                msg = decode(frames, expect=("replay_stats",))
                return {**msg.meta, "t": time.monotonic()}
        raise TimeoutError(f"no replay_stats within {timeout_s:g} s")

    def close(self) -> None:
        self.sock.close(linger=0)


def print_profile(path: str | Path, title: str, limit: int = 18) -> list[dict[str, Any]]:
    """Top functions by own time (where the CPU actually went), printed and returned for the JSON."""
    import pstats

    try:
        stats = pstats.Stats(str(path))
    except (OSError, EOFError, TypeError) as err:
        print(f"(no profile for {title}: {err})")
        return []
    total = stats.total_tt or 1e-9
    rows = []
    entries = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:limit]  # type: ignore[attr-defined]
    for (filename, line, func), (_cc, calls, tottime, cumtime, _callers) in entries:
        where = f"{Path(filename).name}:{line}({func})" if line else func
        rows.append(
            {"function": where, "calls": calls, "own_s": tottime, "cum_s": cumtime, "own_pct": 100 * tottime / total}
        )
    print_table(
        f"profile: {title} ({total:.2f} s profiled)",
        ["function", "calls", "own s", "own %", "cum s"],
        [[r["function"][:70], r["calls"], r["own_s"], r["own_pct"], r["cum_s"]] for r in rows],
    )
    return rows


# ---- statistics ------------------------------------------------------------------------------------
def summarize(samples: Sequence[float]) -> dict[str, Any]:
    """Median over repeats (robust to one disturbed window on a shared machine), with the spread."""
    values = [float(s) for s in samples]
    if not values:
        return {"median": None, "min": None, "max": None, "samples": []}
    return {"median": float(np.median(values)), "min": min(values), "max": max(values), "samples": values}


def percentiles(samples: Sequence[float], qs: Sequence[float] = (50, 90, 99)) -> dict[str, float | None]:
    if not len(samples):
        return {f"p{q:g}": None for q in qs}
    values = np.asarray(samples, dtype=np.float64)
    return {f"p{q:g}": float(np.percentile(values, q)) for q in qs}


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


# ---- output ----------------------------------------------------------------------------------------
def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        return str(value)
    value = float(value)
    if value != value:  # NaN
        return "-"
    magnitude = abs(value)
    if magnitude >= 1000 or value == int(value) and magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def _line(cells: Sequence[str], widths: Sequence[int]) -> str:
    """First column left-aligned (labels), the rest right-aligned (numbers)."""
    return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    cells = [[fmt(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print(_line(headers, widths))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(_line(row, widths))
    sys.stdout.flush()


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    """Enough to tell whether two result files are comparable at all (they rarely are: use ratios)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info: dict[str, Any] = {
        "hostname": socket.gethostname(),
        "cpu_model": cpu,
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "torch": _version("torch"),
        "gymnasium": _version("gymnasium"),
        "gpu": None,
    }
    import torch  # after the run, so that the import never delays a measurement

    info["torch"] = torch.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_result(name: str, path: str | None, args: argparse.Namespace, results: Mapping[str, Any]) -> Path:
    """One JSON file per run: what ran, where, how loaded the machine was, and the results."""
    out = Path(path) if path else RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "benchmark": name,
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "machine": machine_info(),
        "loadavg_end": list(os.getloadavg()),
        "results": results,
    }
    out.write_text(json.dumps(payload, indent=2, default=_json_default) + "\n")
    print(f"\nwrote {out}")
    return out


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


# ---- entry points ----------------------------------------------------------------------------------
def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a few seconds only, for smoke tests")
    parser.add_argument("--json", default=None, metavar="PATH", help="result file (default benchmarks/results/)")
    return parser


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM/SIGHUP unwind like Ctrl-C, so every `finally` (and `Children.close`) runs."""

    def handler(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_benchmark(main: Callable[[], int]) -> None:
    """Run `main` with signal-safe cleanup; exit 130 on interruption, like a shell."""
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    try:
        with _terminate_as_interrupt():
            code = main()
    except KeyboardInterrupt:
        print("\ninterrupted; child processes stopped", file=sys.stderr)
        code = 130
    sys.exit(code)
