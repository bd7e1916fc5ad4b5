"""The run behind `scale_actors.py`: servers, phases of actor hosts (and relays), what the kernel counts.

Why apart from the script: where each process runs (this host, or a network namespace of a small LAN)
is one `Layout`, and the phases, their windows and their counters are the same code for both.
"""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from harness import REPO_ROOT
from harness.lan import NoNamespaces, lan
from harness.processes import Children, cpu_seconds, free_port_base, wait_for
from harness.scale_figures import (
    actor_totals_of,
    hops,
    ingest_rate,
    latency_and_lag,
    ledger_balance,
    read_hop_stamps,
    read_stamps,
)
from harness.system_probes import (
    bytes_between,
    device_tx_bytes,
    port_bytes_sent,
    rss_bytes,
    thread_cpu_s,
    threads_named,
)

START_TIMEOUT_S = 300.0  # 16 processes importing numpy and gymnasium (torch for the CNN) on two cores
WARMUP_S = 5.0
SETTLE_S = 2.0  # versions published this close to the window's end are not counted (still on their way)
STRIDE = 10  # net.shard_port_stride's default


class Skipped(Exception):
    pass


@dataclasses.dataclass
class Layout:
    learner_host: str  # the address actors dial
    servers: list[str]  # command prefix of the servers' host
    actor_hosts: list[list[str]]  # command prefix of each actor host
    env: dict[str, str]
    server_overrides: list[str]
    client_keys: list[str]  # actor and relay flags
    watch_keys: list[str]
    servers_ns: str | None = None
    servers_dev: str | None = None


def shards_supported() -> bool:
    from common.config import ReplayConfig

    return any(f.name == "shards" for f in dataclasses.fields(ReplayConfig))


def _keygen(directory: Path, name: str) -> None:
    argv = [sys.executable, "-m", "common.keys", name, "--dir", str(directory)]
    subprocess.run(argv, cwd=REPO_ROOT, check=True, capture_output=True, timeout=60)


def local_layout(tmp: Path) -> Layout:
    from common.run_keys import ENV, client_files, make_run_keys

    keys = make_run_keys(tmp / "keys")
    secret, server = client_files(keys, "learner")
    watch = ["--secret-key", str(secret), "--server-key", str(server)]
    return Layout("127.0.0.1", [], [[]], {ENV: str(keys)}, [], [], watch)


def namespace_layout(hosts: list, tmp: Path) -> Layout:
    """Servers on hosts[0] listening on every address with CurveZMQ; one key pair for the actor hosts."""
    keys, authorized = tmp / "keys", tmp / "authorized"
    authorized.mkdir(mode=0o755)
    for name in ("server", "actor-host"):
        _keygen(keys, name)
    (authorized / "actor-host.key").write_bytes((keys / "actor-host.key").read_bytes())
    servers = hosts[0]
    overrides = ["net.bind_host=0.0.0.0", f"net.public_host={servers.address}"]
    overrides += [f"net.curve_secret_key={keys / 'server.key_secret'}", f"net.curve_server_key={keys / 'server.key'}"]
    overrides += [f"net.curve_authorized_dir={authorized}"]
    client = ["--curve-secret-key", str(keys / "actor-host.key_secret"), "--curve-server-key", str(keys / "server.key")]
    watch = ["--secret-key", str(keys / "server.key_secret"), "--server-key", str(keys / "server.key")]
    return Layout(
        servers.address,
        servers.prefix(),
        [h.prefix() for h in hosts[1:]],
        {},
        overrides,
        client,
        watch,
        servers.ns,
        servers.dev,
    )


def server_settings(args: Any, shards: int) -> tuple[str, list[str]]:
    """Preset and overrides: a run that never ends by itself, one env per actor, and no rate limiter.

    Why no limiter: on two busy cores the learner (MLP, and more so the Nature CNN) falls behind any
    ratio set at the actors' paced rate from time to time; replay then holds the actors' inserts, and
    at a phase's end their streams' last messages. Without it the learner trains as fast as it gets
    CPU and publishes every `--publish-period` updates."""
    common = ["env.num_envs=1", f"actor.num_actors={args.actors}", "replay.snapshot_interval_s=0"]
    common += ["stop.eval_return=1e9", "stop.max_wall_s=86400", "stop.max_env_steps=1000000000"]
    common += ["stop.max_updates=1000000000", "learner.device=cpu", "learner.checkpoint_interval_s=86400"]
    common += [f"learner.publish_period={args.publish_period}", "log_interval_s=5", "replay.min_size=200"]
    common.append("replay.samples_per_insert=0")
    if shards > 1:
        common.append(f"replay.shards={shards}")
    if args.hosts:  # Nature CNN weights
        from harness.frames_env import ENV_ID

        return "pong", [*common, f"env.id={ENV_ID}", "replay.capacity=20000", "learner.batch_size=32"]
    return "cartpole", [*common, "learner.batch_size=128"]


def weights_bytes(preset: str, overrides: list[str]) -> tuple[str, int]:
    from common.config import load_config
    from common.envs import env_spec
    from common.networks import QNetwork

    config = load_config(preset, [o for o in overrides if o.startswith(("env.", "network."))])
    spec = env_spec(config.env)
    model = QNetwork(spec.obs_shape, spec.num_actions, config.network)
    return config.network.torso, int(sum(t.numel() * t.element_size() for t in model.state_dict().values()))


def run(args: Any, tmp: Path) -> dict[str, Any]:
    with ExitStack() as stack:
        if args.hosts:
            try:
                hosts = stack.enter_context(lan(args.hosts + 1))
            except NoNamespaces as err:
                raise Skipped(f"namespace hosts: {err}") from None
            layout = namespace_layout(hosts, tmp)
        else:
            layout = local_layout(tmp)
        children = stack.enter_context(Children(tmp / "logs"))
        return Run(args, layout, children, tmp).all()


class Run:
    def __init__(self, args: Any, layout: Layout, children: Children, tmp: Path) -> None:
        self.args, self.layout, self.children, self.tmp = args, layout, children, tmp
        self.shards = args.shards if shards_supported() else 1
        if self.shards != args.shards:
            print(f"replay.shards is not in this checkout's config: one replay server instead of {args.shards}")
        self.base = free_port_base(4 + STRIDE * (self.shards - 1))
        self.run_dir = tmp / "run"
        self.stamps = tmp / "stamps.txt"
        self.watch = tmp / "replay-watch.jsonl"
        self.preset, self.overrides = server_settings(args, self.shards)
        self.overrides += layout.server_overrides + args.set

    def _module(self, name: str, module: str, argv: list[str], prefix: list[str], env: dict[str, str] | None = None):
        return self.children.module(name, module, argv, prefix=prefix, env={**self.layout.env, **(env or {})})

    def start_servers(self) -> None:
        common = ["--preset", self.preset, "--port-base", str(self.base), "--run-dir", str(self.run_dir)]
        common += ["--seed", "0"]
        self.replays = []
        for k in range(self.shards):
            shard = ["--shard", str(k)] if self.shards > 1 else []
            argv = [*common, *shard, *self.overrides]
            self.replays.append(self._module(f"replay-{k}", "replay", argv, self.layout.servers))
        self.learner = self._module(
            "learner",
            "harness.stamped_learner",
            [*common, *self.overrides],
            self.layout.servers,
            env={"DISTDQN_BENCH_STAMPS": str(self.stamps)},
        )
        ports = ",".join(str(self.base + 3 + STRIDE * k) for k in range(self.shards))
        self._module(
            "replay-watch",
            "harness.replay_watch",
            ["--host", "127.0.0.1", "--ports", ports, "--out", str(self.watch), *self.layout.watch_keys],
            self.layout.servers,
        )
        wait_for(lambda: read_stamps(self.stamps)[1] is not None, 120, "the learner's control thread", self.children)

    def all(self) -> dict[str, Any]:
        network, size = weights_bytes(self.preset, self.overrides)
        self.start_servers()
        phases = ["relay"] if self.args.hosts else self.args.phases.split(",")
        results = [self.phase(name) for name in phases]
        self.children.stop([self.learner], grace_s=30)
        self.children.stop(self.replays, grace_s=30)
        accounting = ledger_balance(self.run_dir, actor_totals_of([a for p in results for a in p["actors_raw"]]))
        for p in results:
            p["egress"]["copies_per_version"] = p["egress"]["weights_port_bytes_per_version"] / size
        return {
            "phases": results,
            "accounting": accounting,
            "shards": self.shards,
            "network": network,
            "weights_bytes": size,
            "port_base": self.base,
        }

    def phase(self, name: str) -> dict[str, Any]:
        args, layout = self.args, self.layout
        relays, relay_paths = [], []
        count = args.hosts or args.relays
        if name == "relay":
            for r in range(count):
                directory = self.tmp / f"relay-{name}-{r}"
                directory.mkdir(mode=0o700)
                flags = ["--learner", f"{layout.learner_host}:{self.base}", "--socket-dir", str(directory)]
                prefix = layout.actor_hosts[r % len(layout.actor_hosts)]
                stamps = {"DISTDQN_BENCH_STAMPS": str(self.tmp / f"relay-stamps-{name}-{r}.txt")}
                argv = [*flags, *layout.client_keys]
                relays.append(self._module(f"relay-{r}", "harness.stamped_relay", argv, prefix, env=stamps))
                relay_paths.append(directory / "relay.sock")
            wait_for(lambda: all(p.exists() for p in relay_paths), 60, "the relays' sockets", self.children)
        hosts, outs = [], []
        processes = math.ceil(args.actors / args.per_process)
        for p in range(processes):
            first, n = p * args.per_process, min(args.per_process, args.actors - p * args.per_process)
            out = self.tmp / f"{name}-host-{p}.json"
            argv = ["--learner", f"{layout.learner_host}:{self.base}", "--first-index", str(first), "--count", str(n)]
            argv += ["--steps-per-s", str(args.steps_per_s), "--out", str(out), *layout.client_keys]
            if name == "broadcast":
                argv.append("--broadcast")
            if relay_paths:
                argv += ["--relay", str(relay_paths[p % len(relay_paths)])]
            prefix = layout.actor_hosts[p % len(layout.actor_hosts)]
            hosts.append(self._module(f"{name}-actors-{p}", "harness.actor_host", argv, prefix))
            outs.append(out)
        what = f"{args.actors} actors stepping"
        wait_for(lambda: self._running(outs) >= args.actors, START_TIMEOUT_S, what, self.children)
        # Then a few versions out, so every actor follows them (a relay's actors that went to the learner
        # directly while it had nothing to relay are back behind it) before the window opens.
        published = len(read_stamps(self.stamps)[0])
        new = lambda: len(read_stamps(self.stamps)[0]) >= published + 3  # noqa: E731
        wait_for(new, 120, "three versions published with every actor stepping", self.children)
        time.sleep(WARMUP_S)
        window = self._window(relays, hosts)
        self.children.stop(hosts, grace_s=40)
        self.children.stop(relays, grace_s=10)
        actors = [a for out in outs for a in json.loads(out.read_text())["actors"]]
        published = read_stamps(self.stamps)[0]
        t0, t1 = window["t0_ns"], window["t1_ns"]
        latency = latency_and_lag(published, actors, t0, t1, int(SETTLE_S * 1e9))
        result = {
            "name": name,
            "actors_running": window["running"],
            "latency": latency,
            **window["figures"],
            "actors_raw": actors,
            "actors_failed": sum(a["state"] == "failed" for a in actors),
        }
        if relays:
            sent, relayed = read_hop_stamps(self.stamps, sorted(self.tmp.glob(f"relay-stamps-{name}-*.txt")))
            result["hops_ms"] = hops(published, sent, relayed, actors, t0, t1 - int(SETTLE_S * 1e9))
        return result

    def _running(self, outs: list[Path]) -> int:
        total = 0
        for out in outs:
            status = out.with_name(out.name + ".status")
            try:
                data = json.loads(status.read_text())
            except (OSError, ValueError):
                continue
            if data.get("failed"):
                raise RuntimeError(f"{data['failed']} actors failed to start ({out.name}); logs in {self.tmp}/logs")
            total += data.get("running", 0)
        return total

    def _window(self, relays: list, hosts: list) -> dict[str, Any]:
        ns, port = self.layout.servers_ns, self.base + 1
        tid = read_stamps(self.stamps)[1]
        lpid = self.learner.pid
        servers = {"learner": lpid, **{f"replay-{k}": p.pid for k, p in enumerate(self.replays)}}
        servers.update({f"relay-{r}": p.pid for r, p in enumerate(relays)})
        io = threads_named(lpid, "ZMQbg/IO")

        def cpu() -> dict[str, float | None]:
            out = {name: cpu_seconds(pid) for name, pid in servers.items()}
            out["control_thread"] = thread_cpu_s(lpid, tid) if tid else None
            out["learner_zmq_io"] = sum(thread_cpu_s(lpid, t) or 0 for t in io)
            out["actor_hosts"] = sum(cpu_seconds(p.pid) for p in hosts)
            return out

        bytes0, veth0, cpu0 = port_bytes_sent(port, ns), self._veth(), cpu()
        t0, w0 = time.monotonic_ns(), time.monotonic()
        rss_max: dict[str, int] = {}
        while time.monotonic() < w0 + self.args.seconds:
            for name, pid in servers.items():
                rss_max[name] = max(rss_max.get(name, 0), rss_bytes(pid) or 0)
            self.children.check_alive()
            time.sleep(1.0)
        t1, w1 = time.monotonic_ns(), time.monotonic()
        bytes1, veth1, cpu1 = port_bytes_sent(port, ns), self._veth(), cpu()
        running = self._running([Path(h.args[h.args.index("--out") + 1]) for h in hosts])
        wall = w1 - w0
        shares = {k: (cpu1[k] - cpu0[k]) / wall if cpu0[k] is not None and cpu1[k] is not None else None for k in cpu0}
        versions = sum(1 for t in read_stamps(self.stamps)[0].values() if t0 <= t <= t1)
        egress = {"versions": versions, "weights_port_bytes": bytes_between(bytes0, bytes1), "connections": len(bytes1)}
        egress["weights_port_bytes_per_version"] = egress["weights_port_bytes"] / versions if versions else 0
        if veth0 is not None and veth1 is not None:
            egress["veth_bytes_per_version"] = (veth1 - veth0) / versions if versions else 0
        figures = {
            "window_s": wall,
            "ingest": ingest_rate(self.watch, w0, w1),
            "cpu": {"control_thread_share": shares.pop("control_thread"), "shares": shares},
            "rss_max": rss_max,
            "egress": egress,
        }
        return {"t0_ns": t0, "t1_ns": t1, "running": running, "figures": figures}

    def _veth(self) -> int | None:
        if self.layout.servers_ns is None or self.layout.servers_dev is None:
            return None
        return device_tx_bytes(self.layout.servers_ns, self.layout.servers_dev)
