"""A real OpenSSH server inside a network namespace, for the ssh launcher's tests.

Key authentication only (passwords, keyboard-interactive and PAM off), a host key and an
authorized_keys made for the test in its temporary directory, listening on the namespace's own
address. The client side is an ssh config file that trusts exactly that host key and uses exactly the
test's client key, so nothing of the machine's own ssh set-up is read or changed.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from tests.integration import debian

SSHD = "/usr/sbin/sshd"
PACKAGES = {SSHD: "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client"}


@dataclass
class SshSetup:
    config: Path  # the client's ssh config: `ssh -F config root@ADDRESS`
    client_key: Path

    @property
    def command(self) -> str:
        """The DISTDQN_SSH value for the launcher."""
        return f"ssh -F {self.config}"


def require() -> None:
    debian.require("ssh", PACKAGES)


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True, timeout=30)
    return path.with_suffix(".pub").read_text().strip()


def client_setup(directory: Path) -> SshSetup:
    directory.mkdir(parents=True, exist_ok=True)
    client_key = directory / "client_key"
    _keygen(client_key)
    config = directory / "ssh_config"
    config.write_text(
        "Host *\n"
        "  User root\n"
        f"  IdentityFile {client_key}\n"
        "  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {directory / 'known_hosts'}\n"
        "  GlobalKnownHostsFile /dev/null\n"
        "  StrictHostKeyChecking yes\n"
        "  PasswordAuthentication no\n"
        "  KbdInteractiveAuthentication no\n"
        "  LogLevel ERROR\n"
    )
    return SshSetup(config, client_key)


def server_argv(setup: SshSetup, directory: Path, address: str) -> list[str]:
    """sshd in the foreground (-D, logging to stderr) for `address`; trusted by `setup`'s known_hosts."""
    directory.mkdir(parents=True, exist_ok=True)
    host_key = directory / "host_key"
    host_public = _keygen(host_key)
    with (setup.config.parent / "known_hosts").open("a") as known:
        known.write(f"{address} {host_public}\n")
    authorized = directory / "authorized_keys"
    authorized.write_text(setup.client_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    config = directory / "sshd_config"
    config.write_text(
        f"ListenAddress {address}\n"
        "Port 22\n"
        f"HostKey {host_key}\n"
        f"AuthorizedKeysFile {authorized}\n"
        f"PidFile {directory / 'sshd.pid'}\n"
        "PubkeyAuthentication yes\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "PermitRootLogin prohibit-password\n"
        # The test's files lie under the world-writable /tmp, which StrictModes would refuse.
        "StrictModes no\n"
        "LogLevel INFO\n"
    )
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
    return [SSHD, "-D", "-e", "-f", str(config)]
