"""Network namespaces on a bridge ("hosts" on a small LAN) for a benchmark, removed on any exit.

Why not the tests' helper (tests/integration/bridge.py): it skips through pytest; a benchmark prints the
reason and carries on without that part. The layout is the same: the bridge in a namespace of its own,
so nothing is added to this machine's network, and addresses from 10.215.0.0/16, which exist only
inside the namespaces. Needs Linux, root and iproute2. Processes started inside must be stopped before
the block ends (deleting a namespace does not stop them): `Children` inside the `with` does that.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


class NoNamespaces(Exception):
    """Namespaces cannot be made here; the message says why."""


@dataclass
class Host:
    ns: str
    address: str
    dev: str  # its end of the veth pair

    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.ns]


def _ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def _must(*args: str) -> None:
    result = _ip(*args)
    if result.returncode != 0:
        raise NoNamespaces(f"'ip {' '.join(args)}' failed: {result.stderr.strip()}")


@contextmanager
def lan(count: int) -> Iterator[list[Host]]:
    if not sys.platform.startswith("linux") or shutil.which("ip") is None:
        raise NoNamespaces("needs Linux with the iproute2 'ip' command")
    if os.geteuid() != 0:
        raise NoNamespaces("needs root to create network namespaces")
    tag = f"dqb{secrets.token_hex(3)}"
    subnet = secrets.randbelow(256)
    bridge_ns = f"{tag}br"
    created: list[str] = []
    hosts: list[Host] = []
    try:
        _must("netns", "add", bridge_ns)
        created.append(bridge_ns)
        _must("-n", bridge_ns, "link", "add", "br0", "type", "bridge")
        _must("-n", bridge_ns, "link", "set", "br0", "up")
        for i in range(count):
            host = Host(f"{tag}h{i}", f"10.215.{subnet}.{i + 1}", f"{tag}h{i}")
            port = f"{tag}p{i}"
            _must("netns", "add", host.ns)
            created.append(host.ns)
            _must("link", "add", host.dev, "type", "veth", "peer", "name", port)
            _must("link", "set", host.dev, "netns", host.ns)
            _must("link", "set", port, "netns", bridge_ns)
            _must("-n", bridge_ns, "link", "set", port, "master", "br0")
            _must("-n", bridge_ns, "link", "set", port, "up")
            _must("-n", host.ns, "addr", "add", f"{host.address}/24", "dev", host.dev)
            _must("-n", host.ns, "link", "set", host.dev, "up")
            _must("-n", host.ns, "link", "set", "lo", "up")
            hosts.append(host)
        yield hosts
    finally:
        for ns in reversed(created):
            _ip("netns", "delete", ns)  # takes its veth ends, and so the pairs, with it
        for i in range(count):
            _ip("link", "delete", f"{tag}h{i}")  # only there if a step failed before the move
