"""A one-node Slurm cluster for a test: munged, slurmctld and slurmd with a config written to a temp dir.

Every daemon gets its own sockets, state, spool and log files under that directory and its own ports,
so nothing of a Slurm set-up this machine may have is read or changed. The node is this machine,
reached on 127.0.0.1, with more CPUs configured than it has (`config_overrides`), so a test can ask for
several tasks on a small machine. Needs root (the daemons run as root); installs Debian's slurm-wlm
and munge when missing, or skips with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.integration import debian

PACKAGES = {
    "munged": "munge",
    "mungekey": "munge",
    "slurmctld": "slurmctld",
    "slurmd": "slurmd",
    "sbatch": "slurm-client",
    "scontrol": "slurm-client",
}
CPUS = 8


@dataclass
class Slurm:
    directory: Path
    env: dict[str, str]  # SLURM_CONF for the client commands

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(list(argv), env=self.env, capture_output=True, text=True, timeout=timeout)

    def sbatch(self, *argv: str, env: dict[str, str] | None = None) -> int:
        result = subprocess.run(
            ["sbatch", "--parsable", *argv], env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=30
        )
        assert result.returncode == 0, f"sbatch failed: {result.stderr}\n{self.logs()}"
        return int(result.stdout.strip().split(";")[0])

    def job_state(self, job: int) -> str:
        """PENDING, RUNNING, COMPLETING, ... from squeue; '' once the job has left the queue."""
        result = self.run("squeue", "-h", "-j", str(job), "-o", "%T")
        return result.stdout.strip() if result.returncode == 0 else ""

    def logs(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.directory / name
            text = path.read_text(errors="replace") if path.exists() else "(missing)"
            parts.append(f"--- {name} ---\n" + "\n".join(text.splitlines()[-15:]))
        return "\n".join(parts)


def require() -> None:
    if os.geteuid() != 0:
        debian.skip("Slurm", "needs root to run munged, slurmctld and slurmd")
    debian.require("Slurm", PACKAGES)


def _free_ports(count: int) -> list[int]:
    ports, held = [], []
    for _ in range(count):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        held.append(sock)
        ports.append(sock.getsockname()[1])
    for sock in held:
        sock.close()
    return ports


def _config(directory: Path, node: str, ctld_port: int, slurmd_port: int) -> str:
    return f"""\
ClusterName=distdqntest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={directory / "munge.socket"}
StateSaveLocation={directory / "state"}
SlurmdSpoolDir={directory / "spool"}
SlurmctldPidFile={directory / "slurmctld.pid"}
SlurmdPidFile={directory / "slurmd.pid"}
SlurmctldLogFile={directory / "slurmctld.log"}
SlurmdLogFile={directory / "slurmd.log"}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=30
MinJobAge=5
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={node} NodeAddr=127.0.0.1 CPUs={CPUS} RealMemory=1000 State=UNKNOWN
PartitionName=test Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
"""


def _wait(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return False


def _kill_job_processes(conf: Path, daemons: set[int]) -> None:
    """SIGKILL whatever still runs with this cluster's SLURM_CONF (job processes a failed test left)."""
    marker = f"SLURM_CONF={conf}".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid() or int(name) in daemons:
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(name), signal.SIGKILL)


@contextlib.contextmanager
def one_node_cluster(directory: Path) -> Iterator[Slurm]:
    """The three daemons, up and the node idle; all stopped (process groups killed) when the block ends."""
    require()
    directory.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (directory / sub).mkdir(exist_ok=True)
    node = socket.gethostname().split(".")[0]
    ctld_port, slurmd_port = _free_ports(2)
    conf = directory / "slurm.conf"
    conf.write_text(_config(directory, node, ctld_port, slurmd_port))
    env = dict(os.environ, SLURM_CONF=str(conf))
    key = directory / "munge.key"
    subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True, capture_output=True, timeout=30)
    key.chmod(0o600)
    daemons: list[subprocess.Popen[bytes]] = []
    munge = [shutil.which("munged") or "munged", "--foreground", "--force", "--key-file", str(key)]
    munge += ["--socket", str(directory / "munge.socket"), "--log-file", str(directory / "munged.log")]
    munge += ["--pid-file", str(directory / "munged.pid"), "--seed-file", str(directory / "munged.seed")]
    argvs = [munge, ["slurmctld", "-D", "-i", "-f", str(conf)], ["slurmd", "-D", "-f", str(conf), "-N", node]]
    slurm = Slurm(directory, env)
    try:
        for argv in argvs:
            with (directory / f"{Path(argv[0]).name}.out").open("wb") as out:
                daemons.append(
                    subprocess.Popen(
                        argv,
                        env=env,
                        stdin=subprocess.DEVNULL,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )  # fmt: skip
                )
            if argv is munge and not _wait(lambda: (directory / "munge.socket").exists(), 30):
                debian.skip("Slurm", f"munged did not start: {(directory / 'munged.out').read_text()[-300:]}")

        def idle() -> bool:
            return "idle" in slurm.run("sinfo", "-h", "-o", "%t").stdout

        if not _wait(idle, 60):
            debian.skip("Slurm", f"the one-node Slurm cluster did not come up\n{slurm.logs()}")
        yield slurm
    finally:
        if daemons:
            slurm.run("scancel", "--user", "root")  # this cluster's jobs only: SLURM_CONF is ours
            _wait(lambda: not slurm.run("squeue", "-h").stdout.strip(), 40)
        _kill_job_processes(conf, {proc.pid for proc in daemons})
        for proc in reversed(daemons):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(daemons):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
