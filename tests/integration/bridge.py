"""Several network namespaces ("hosts") joined by veth pairs through a bridge: a small LAN for one test.

The bridge lives in a namespace of its own, so nothing is added to this machine's own network; the
addresses are a /24 from 10.214.0.0/16, which exists only inside the namespaces. Needs Linux, root and
`ip netns`; skips the test with the reason otherwise. Everything is deleted when the block ends, pass or
fail (processes started inside must be stopped by the test).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from tests.integration.netns import ip, skip, veth_link


@dataclass
class Host:
    ns: str
    address: str
    dev: str  # its end of the veth pair
    port: str  # the bridge's end

    def command(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]


@dataclass
class Lan:
    bridge_ns: str
    hosts: list[Host]

    def set_up(self, host: Host, up: bool) -> None:
        """Cut one host off the LAN (both ends of its cable down) or plug it back in."""
        state = "up" if up else "down"
        for ns, dev in ((host.ns, host.dev), (self.bridge_ns, host.port)):
            result = ip("-n", ns, "link", "set", dev, state)
            assert result.returncode == 0, f"ip -n {ns} link set {dev} {state}: {result.stderr}"


def _run(*args: str) -> None:
    result = ip(*args)
    if result.returncode != 0:
        skip(f"'ip {' '.join(args)}' failed: {result.stderr.strip()}")


@contextmanager
def lan(count: int) -> Iterator[Lan]:
    with veth_link():  # the platform and permission checks, with their skip reasons
        pass
    tag = f"dq{secrets.token_hex(3)}"
    subnet = secrets.randbelow(256)
    made = Lan(f"{tag}br", [])
    created: list[str] = []
    try:
        _run("netns", "add", made.bridge_ns)
        created.append(made.bridge_ns)
        _run("-n", made.bridge_ns, "link", "add", "br0", "type", "bridge")
        _run("-n", made.bridge_ns, "link", "set", "br0", "up")
        for i in range(count):
            host = Host(f"{tag}h{i}", f"10.214.{subnet}.{i + 1}", f"{tag}h{i}", f"{tag}p{i}")
            _run("netns", "add", host.ns)
            created.append(host.ns)
            _run("link", "add", host.dev, "type", "veth", "peer", "name", host.port)
            _run("link", "set", host.dev, "netns", host.ns)
            _run("link", "set", host.port, "netns", made.bridge_ns)
            _run("-n", made.bridge_ns, "link", "set", host.port, "master", "br0")
            _run("-n", made.bridge_ns, "link", "set", host.port, "up")
            _run("-n", host.ns, "addr", "add", f"{host.address}/24", "dev", host.dev)
            _run("-n", host.ns, "link", "set", host.dev, "up")
            _run("-n", host.ns, "link", "set", "lo", "up")
            made.hosts.append(host)
        yield made
    finally:
        for ns in reversed(created):
            ip("netns", "delete", ns)
        for i in range(count):
            ip("link", "delete", f"{tag}h{i}")  # only there if a step failed before the move
