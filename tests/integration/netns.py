"""Two network namespaces joined by a veth pair: a real non-loopback link for integration tests.

It touches no real network: the only addresses are the pair's own (a /30 from 10.213.0.0/16, which
exists only inside the namespaces). Needs Linux, root and `ip netns`; `veth_link` skips the test with
the reason otherwise. Everything it creates is removed when the `with` block ends, pass or fail
(processes started inside must be stopped by the test, which deleting a namespace does not do).
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
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def ip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)


def skip(reason: str) -> None:
    print(f"skipping the network-namespace test: {reason}")
    pytest.skip(reason)


@dataclass
class Link:
    server_ns: str
    client_ns: str
    server_ip: str
    client_ip: str
    server_dev: str
    client_dev: str

    def command(self, ns: str, argv: list[str]) -> list[str]:
        """`argv` run inside namespace `ns` (ip netns exec replaces itself with it: same PID)."""
        return ["ip", "netns", "exec", ns, *argv]

    def run(self, ns: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(ns, argv), cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)

    def set_up(self, up: bool) -> None:
        """Take both ends of the pair down (a partition: nothing passes, connects fail at once) or up again."""
        state = "up" if up else "down"
        for ns, dev in ((self.server_ns, self.server_dev), (self.client_ns, self.client_dev)):
            result = ip("-n", ns, "link", "set", dev, state)
            assert result.returncode == 0, f"ip -n {ns} link set {dev} {state}: {result.stderr}"


@contextmanager
def veth_link() -> Iterator[Link]:
    if not sys.platform.startswith("linux") or shutil.which("ip") is None:
        skip("needs Linux with the iproute2 'ip' command")
    if os.geteuid() != 0:
        skip("needs root to create network namespaces")
    tag = f"dq{secrets.token_hex(3)}"
    subnet = secrets.randbelow(256)
    veth_server, veth_client = f"{tag}a", f"{tag}b"
    link = Link(f"{tag}s", f"{tag}c", f"10.213.{subnet}.1", f"10.213.{subnet}.2", veth_server, veth_client)
    created: list[str] = []
    try:
        result = ip("netns", "add", link.server_ns)
        if result.returncode != 0:
            skip(f"'ip netns add' is not permitted here: {result.stderr.strip()}")
        created.append(link.server_ns)
        steps = [
            ("netns", "add", link.client_ns),
            ("link", "add", veth_server, "type", "veth", "peer", "name", veth_client),
            ("link", "set", veth_server, "netns", link.server_ns),
            ("link", "set", veth_client, "netns", link.client_ns),
            ("-n", link.server_ns, "addr", "add", f"{link.server_ip}/30", "dev", veth_server),
            ("-n", link.client_ns, "addr", "add", f"{link.client_ip}/30", "dev", veth_client),
            ("-n", link.server_ns, "link", "set", veth_server, "up"),
            ("-n", link.client_ns, "link", "set", veth_client, "up"),
            ("-n", link.server_ns, "link", "set", "lo", "up"),
            ("-n", link.client_ns, "link", "set", "lo", "up"),
        ]
        for step in steps:
            result = ip(*step)
            if step[:2] == ("netns", "add") and result.returncode == 0:
                created.append(step[2])
            if result.returncode != 0:
                skip(f"'ip {' '.join(step)}' failed: {result.stderr.strip()}")
        yield link
    finally:
        for ns in created:
            ip("netns", "delete", ns)  # takes its end of the veth pair, and so the pair, with it
        ip("link", "delete", veth_server)  # only there if a step failed before the move


def keygen(directory: Path, name: str) -> None:
    """A CurveZMQ key pair, made the way docs/security.md tells users to."""
    result = subprocess.run(
        [sys.executable, "-m", "common.keys", name, "--dir", str(directory)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
