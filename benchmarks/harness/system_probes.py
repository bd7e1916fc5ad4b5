"""What the kernel says about a run's servers: RSS, one thread's CPU time, bytes sent on a port or a device.

Why the kernel's figures: they count what the processes cannot misreport (a process's own counters
would leave out libzmq's I/O threads, CURVE framing and TCP retransmits). `ns` names a network
namespace: the socket and device counters are then read inside it (`ip netns exec`), as root.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

_SENT = re.compile(r"bytes_sent:(\d+)")


def rss_bytes(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def thread_cpu_s(pid: int, tid: int) -> float | None:
    """User + system CPU time of one thread of `pid`."""
    try:
        text = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def threads_named(pid: int, prefix: str) -> list[int]:
    """Thread ids of `pid` whose kernel name starts with `prefix` (libzmq names its I/O threads ZMQbg/IO/N)."""
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                if (task / "comm").read_text().startswith(prefix):
                    out.append(int(task.name))
            except OSError:
                continue
    except OSError:
        pass
    return out


def _in_ns(ns: str | None, argv: list[str]) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv] if ns else argv


def port_bytes_sent(port: int, ns: str | None = None) -> dict[str, int]:
    """bytes_sent (TCP payload, retransmits included) of every established connection whose local port is
    `port`, by peer address: the server's egress on that port, connection by connection."""
    argv = ["ss", "-tinH", "state", "established", f"( sport = :{port} )"]
    result = subprocess.run(_in_ns(ns, argv), capture_output=True, text=True, timeout=30)
    out: dict[str, int] = {}
    peer = None
    for line in result.stdout.splitlines():
        if line and not line[0].isspace():
            fields = line.split()
            peer = fields[3] if len(fields) >= 4 else None
        elif peer is not None and (m := _SENT.search(line)):
            out[peer] = int(m.group(1))
    return out


def bytes_between(before: dict[str, int], after: dict[str, int]) -> int:
    """What the connections sent between two `port_bytes_sent` readings (a new one counts from zero)."""
    return sum(max(0, n - before.get(peer, 0)) for peer, n in after.items())


def device_tx_bytes(ns: str, dev: str) -> int | None:
    """Bytes a network device sent (its own counter, every protocol), inside namespace `ns`."""
    result = subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", "dev", dev], capture_output=True, text=True)
    try:
        return int(json.loads(result.stdout)[0]["stats64"]["tx"]["bytes"])
    except (ValueError, KeyError, IndexError):
        return None
