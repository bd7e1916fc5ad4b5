"""Statistics, printed tables and profiles, and the JSON result file with the machine it ran on.

Why medians and ratios: on a shared machine one disturbed window is common, and two result files from
different days or machines are rarely comparable; a median over repeats and a ratio against a peer
measured in the same run are.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import json
import os
import platform
import socket
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zmq

from harness import RESULTS_DIR


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


# ---- tables ----------------------------------------------------------------------------------------
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


# ---- the result file -------------------------------------------------------------------------------
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
