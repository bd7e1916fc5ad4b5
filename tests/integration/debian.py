"""Install what an engine test needs from Debian's packages, or skip it with one printed reason.

Tests of real engines (OpenSSH, Slurm) need their daemons. On a Debian/Ubuntu machine where the
tests run as root, the packages are installed on first use (`apt-get update` once per session, then
`apt-get install --no-install-recommends`); elsewhere the test is skipped, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

_updated = False


def skip(what: str, reason: str) -> None:
    print(f"skipping the {what} test: {reason}")
    pytest.skip(reason)


def require(what: str, commands: dict[str, str], timeout_s: float = 900) -> None:
    """Make every command in `commands` (command -> Debian package) available, or skip the test."""
    global _updated
    missing = {cmd: pkg for cmd, pkg in commands.items() if shutil.which(cmd) is None and not os.path.exists(cmd)}
    if not missing:
        return
    packages = sorted(set(missing.values()))
    if os.geteuid() != 0:
        skip(what, f"needs {', '.join(packages)} (not installed, and installing needs root)")
    if shutil.which("apt-get") is None:
        skip(what, f"needs {', '.join(packages)} (not installed, and there is no apt-get here)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        if not _updated:
            subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=timeout_s, check=True)
            _updated = True
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
            env=env,
            capture_output=True,
            timeout=timeout_s,
            check=True,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
        output = getattr(err, "stderr", b"") or b""
        last = output.decode(errors="replace").strip().splitlines()[-1:] or [str(err)]
        skip(what, f"could not install {', '.join(packages)}: {last[0]}")
    still = [cmd for cmd in missing if shutil.which(cmd) is None and not os.path.exists(cmd)]
    if still:
        skip(what, f"installed {', '.join(packages)} but {', '.join(still)} is still missing")
