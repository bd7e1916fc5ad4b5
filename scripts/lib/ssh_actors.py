"""Blocks of actors on other hosts over ssh: started, their output logged here, restarted, stopped.

`scripts/launch_cluster.sh --actor-hosts FILE` runs this next to the learner. FILE has one block a
line, `HOST [ACTORS]` (ACTORS defaults to 1; `#` starts a comment; HOST is anything ssh accepts, such
as `user@host` or an alias from ~/.ssh/config). Blocks take consecutive global actor indices from
`--first-index` on, in file order, so the Ape-X epsilons spread over the whole population.

Each block is one ssh session (BatchMode: key authentication only, never a prompt) that runs
`scripts/launch_actors.sh` in the remote checkout. The session's output (ssh's own messages, the
block's launcher and every actor's log, followed with `tail -F`) is appended to LOG_DIR/ssh-HOST.log.
No secret crosses a command line: the remote's key files are named by path. A watchdog on the remote
reads the session's stdin, so the block stops when the session ends for any reason, this process
being killed included. A session that dies (ssh exits non-zero) is restarted with backoff, a bounded
number of times; one that ends with status 0 finished with the run (the learner's stop broadcast).

Settings, from the environment (each optional):
  DISTDQN_SSH                  the ssh command, split like a shell would (default `ssh`), e.g. `ssh -F FILE`
  DISTDQN_REMOTE_DIR           the checkout on the remote hosts (default: this checkout's path)
  DISTDQN_REMOTE_SECRET_KEY    the remote's CurveZMQ secret key file, relative to the checkout or absolute
  DISTDQN_REMOTE_SERVER_KEY    the servers' public key file on the remote (default keys/server.key)
  DISTDQN_REMOTE_RUNS          where the blocks keep their own logs on the remote (default runs, in the checkout)
  DISTDQN_MAX_RESTARTS         restarts per block before it is given up on (default 5)
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SSH_OPTIONS = [
    "-o", "BatchMode=yes",  # key authentication only: a missing key fails at once instead of prompting
    "-o", "ServerAliveInterval=5",  # a dead network path ends the session after 30 s, not after TCP's hours
    "-o", "ServerAliveCountMax=6",
    "-o", "ConnectTimeout=20",
]  # fmt: skip
STOP_GRACE_S = 6.0
_HOST = re.compile(r"^[A-Za-z0-9_.@:\[\]-]+$")


class HostsError(ValueError):
    """A hosts file that cannot be used; the message names the line."""


@dataclass
class Block:
    host: str
    count: int
    first_index: int
    name: str
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    restart_at: float | None = None
    done: bool = False
    log: Path = field(default_factory=Path)


def read_hosts(path: Path) -> list[tuple[str, int]]:
    """(host, actors) per line of a hosts file, or HostsError naming the bad line."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise HostsError(f"cannot read the hosts file {path}: {err.strerror}") from None
    hosts = []
    for number, line in enumerate(lines, 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        where = f"{path}:{number}"
        if len(words) > 2 or not _HOST.match(words[0]) or words[0].startswith("-"):
            raise HostsError(f"{where}: expected 'HOST [ACTORS]', got {line.strip()!r}")
        count = words[1] if len(words) == 2 else "1"
        if not count.isdigit() or not 1 <= int(count) <= 4096:
            raise HostsError(f"{where}: ACTORS must be a positive integer, got {count!r}")
        hosts.append((words[0], int(count)))
    if not hosts:
        raise HostsError(f"{path}: no hosts (one 'HOST [ACTORS]' a line)")
    return hosts


def remote_script(block: Block, learner: str, run_name: str) -> str:
    """The command line ssh hands the remote shell: keys by path only, a watchdog on stdin."""
    remote_dir = os.environ.get("DISTDQN_REMOTE_DIR", str(ROOT))
    # One log directory per session, so that following it from the start repeats nothing.
    log_dir = f"{os.environ.get('DISTDQN_REMOTE_RUNS', 'runs')}/{run_name}-{block.name}.{block.restarts}/logs"
    argv = ["scripts/launch_actors.sh", "--learner", learner, "--num-actors", str(block.count)]
    argv += ["--first-index", str(block.first_index), "--log-dir", log_dir.removesuffix("/logs")]
    secret = os.environ.get("DISTDQN_REMOTE_SECRET_KEY", "")
    if secret:
        server = os.environ.get("DISTDQN_REMOTE_SERVER_KEY", "keys/server.key")
        argv += ["--curve-secret-key", secret, "--curve-server-key", server]
    last = block.first_index + block.count
    actor_logs = " ".join(shlex.quote(f"{log_dir}/actor-{i}.log") for i in range(block.first_index, last))
    block_log = shlex.quote(f"{log_dir}/block.log")
    lines = [
        f"cd {shlex.quote(remote_dir)} && mkdir -p {shlex.quote(log_dir)} || exit 2",
        # The block writes to a file, not to the session: a dead session must not kill it with SIGPIPE
        # before it has stopped its actors.
        f"{shlex.join(argv)} </dev/null >>{block_log} 2>&1 & block=$!",
        # The watchdog: stdin ends when the ssh session does, however it ends. (Kept on fd 3 first: a
        # background command's stdin is /dev/null.)
        "exec 3<&0",
        "(cat <&3 >/dev/null; kill -TERM $block 2>/dev/null) & watchdog=$!",
        # Follow the logs once they exist (the block creates them as it starts each actor), or at once if
        # the block has already ended.
        f"for _ in $(seq 100); do ls {actor_logs} >/dev/null 2>&1 && break; kill -0 $block 2>/dev/null || break; "
        "sleep 0.2; done",
        f"tail -q -n +1 -F {block_log} {actor_logs} 2>/dev/null & follower=$!",
        "wait $block; status=$?",
        "sleep 0.5; kill $follower $watchdog 2>/dev/null",
        "exit $status",
    ]
    return "bash -c " + shlex.quote("\n".join(lines))


class Supervisor:
    def __init__(self, blocks: list[Block], learner: str, run_name: str, max_restarts: int) -> None:
        self.blocks = blocks
        self.learner = learner
        self.run_name = run_name
        self.max_restarts = max_restarts
        self.ssh = shlex.split(os.environ.get("DISTDQN_SSH", "ssh"))
        self.stopping = False

    def launch(self, block: Block) -> None:
        argv = [*self.ssh, *SSH_OPTIONS, block.host, remote_script(block, self.learner, self.run_name)]
        with block.log.open("ab") as log:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            last = block.first_index + block.count - 1
            log.write(f"[{stamp}] ssh {block.host}: actors {block.first_index}..{last}\n".encode())
            log.flush()
            # stdin stays an open pipe: its end is the remote watchdog's signal to stop the block.
            block.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)

    def poll(self) -> bool:
        """One pass over the blocks; False once every block has finished or been given up on."""
        now = time.monotonic()
        for block in self.blocks:
            if block.done:
                continue
            if block.restart_at is not None:
                if now >= block.restart_at:
                    block.restart_at = None
                    say(f"restarting the block on {block.host} (restart {block.restarts} of {self.max_restarts})")
                    self.launch(block)
                continue
            code = block.proc.poll() if block.proc is not None else 0
            if code is None:
                continue
            if code == 0:
                say(f"the block on {block.host} finished")
                block.done = True
            elif block.restarts >= self.max_restarts:
                say(f"error: the ssh session to {block.host} died (status {code}) after {block.restarts} restarts; "
                    f"giving up on it (see {block.log})")  # fmt: skip
                block.done = True
            else:
                delay = 1 << block.restarts
                block.restarts += 1
                block.restart_at = now + delay
                say(f"the ssh session to {block.host} died (status {code}); restarting in {delay} s (see {block.log})")
        return not all(block.done for block in self.blocks)

    def stop(self) -> None:
        """End every session: the remote watchdogs stop their blocks; ssh itself is ended after a grace."""
        running = [b.proc for b in self.blocks if b.proc is not None and b.proc.poll() is None]
        for proc in running:
            if proc.stdin is not None:
                proc.stdin.close()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.terminate()
        for proc in running:
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def say(message: str) -> None:
    print(f"ssh-actors: {message}", file=sys.stderr, flush=True)


def make_blocks(hosts: list[tuple[str, int]], first_index: int, log_dir: Path) -> list[Block]:
    blocks, seen, index = [], {}, first_index
    for host, count in hosts:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", host)
        seen[base] = seen.get(base, 0) + 1
        name = base if seen[base] == 1 else f"{base}-{seen[base]}"
        blocks.append(Block(host, count, index, name, log=log_dir / f"ssh-{name}.log"))
        index += count
    return blocks


def main() -> int:
    parser = argparse.ArgumentParser(prog="ssh_actors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=Path, required=True, help="the hosts file: 'HOST [ACTORS]' a line")
    parser.add_argument("--count", action="store_true", help="only check the file and print its number of actors")
    parser.add_argument("--first-index", type=int, default=0, help="global index of the first block's first actor")
    parser.add_argument("--learner", default="", help="learner control address HOST:PORT as the remotes reach it")
    parser.add_argument("--log-dir", type=Path, default=Path("."), help="where ssh-HOST.log files go")
    parser.add_argument("--run-name", default="actors", help="names the blocks' log directories on the remotes")
    parser.add_argument("--parent", type=int, default=0, help="stop when this process (the launcher) is gone")
    args = parser.parse_args()
    try:
        hosts = read_hosts(args.hosts)
    except HostsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.count:
        print(sum(count for _, count in hosts))
        return 0
    max_restarts = int(os.environ.get("DISTDQN_MAX_RESTARTS", "5"))
    supervisor = Supervisor(
        make_blocks(hosts, args.first_index, args.log_dir), args.learner, args.run_name, max_restarts
    )

    def on_signal(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for block in supervisor.blocks:
            supervisor.launch(block)
        while supervisor.poll():
            if args.parent and not _alive(args.parent):
                say("the launcher is gone; stopping the remote blocks")
                break
            time.sleep(0.5)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        supervisor.stop()
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


if __name__ == "__main__":
    sys.exit(main())
