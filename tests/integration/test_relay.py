"""The weight relay (`actor.relay`): one subscriber to the learner per host, actors fed from shared memory.

Real processes on loopback with the run's own keys: a learner and replay server, a relay, two actors.
The learner's PUB must have exactly one connection (the relay's) while both actors take new versions;
a killed relay must not stop the actors' weights (they go to the learner directly) and a new relay
takes them back; bad weights from the learner's side are refused and never reach an actor.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import zmq

from common.run_keys import ENV, make_run_keys
from common.sockets import make_socket
from common.wire import Encoder, decode, kind_prefix

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster

REPO = Path(__file__).resolve().parents[2]
LAUNCH_ACTORS = REPO / "scripts" / "launch_actors.sh"
NEVER_SOLVE = ("stop.eval_return=1000000", "stop.max_wall_s=150", "log_interval_s=1", "--no-eval")


def _established(port: int) -> int:
    """TCP connections accepted on 127.0.0.1:`port` and open now (the server's end, from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if int(local.split(":")[1], 16) == port and state == "01":
            count += 1
    return count


def _actor_versions(cluster: Cluster) -> dict[int, int]:
    try:
        report = json.loads((cluster.run_dir / "actors.json").read_text())
    except (OSError, ValueError):
        return {}
    return {row["index"]: row["weight_version"] for row in report["actors"]}


def _all_newer(cluster: Cluster, than: dict[int, int], count: int = 2) -> dict[int, int] | None:
    """Every one of `count` actors reports a version newer than in `than` (when it was there)."""
    now = _actor_versions(cluster)
    if len(now) >= count and all(v > than.get(i, -1) >= -1 and v >= 0 for i, v in now.items()):
        return now
    return None


def _start_servers(cluster: Cluster) -> Path:
    keys = make_run_keys(cluster.run_dir / "keys")
    cluster.env[ENV] = str(keys)
    cluster.start_replay()
    cluster.start_learner(*[o for o in NEVER_SOLVE if o != "--no-eval"])
    return keys


def _start_relay(cluster: Cluster, name: str, keys: Path) -> None:
    cluster.start(name, [sys.executable, "-m", "actor.relay", "--learner", cluster.learner_address])
    assert cluster.wait_until(lambda: (keys / "relay.sock").exists(), timeout_s=30), cluster.diagnostics()


def test_two_actors_take_every_version_through_one_relay_connection(cluster: Cluster) -> None:
    cluster.start_launcher(
        *("--run-dir", str(cluster.run_dir), "--port-base", str(cluster.port_base), "--seed", "0"),
        *("--servers-only", "--num-actors", "2", *NEVER_SOLVE),
    )
    hint = cluster.wait_until(
        lambda: re.search(r"actors on this host: DISTDQN_RUN_KEYS=(\S+) ", cluster.stdout("launcher")), timeout_s=60
    )
    assert hint, f"the launcher did not start the servers\n{cluster.diagnostics()}"
    cluster.env[ENV] = hint.group(1)
    logs = cluster.tmp_path / "actors"
    cluster.start(
        "actors",
        [str(LAUNCH_ACTORS), "--learner", cluster.learner_address, "--num-actors", "2", "--relay"]
        + ["--log-dir", str(logs)],
    )
    first = cluster.wait_until(lambda: _all_newer(cluster, {}), timeout_s=90)
    assert first, f"the actors took no weights\n{cluster.diagnostics()}"
    later = cluster.wait_until(lambda: _all_newer(cluster, first), timeout_s=60)
    assert later, f"the actors took no newer weights\n{cluster.diagnostics()}"
    # One subscriber on the learner's weight broadcast: the relay. Two actors, one copy of each version.
    assert _established(cluster.port_base + 1) == 1, cluster.diagnostics()

    # The launcher restarts a relay that dies, and the actors come back to it.
    relay = [p for p in cluster.remember_descendants() if "-m actor.relay" in cluster.command_line(p)]
    assert len(relay) == 1, relay
    os.kill(relay[0], signal.SIGKILL)
    said = logs / "logs" / "launcher.log"
    assert cluster.wait_until(lambda: "restarting relay (restart 1 of" in said.read_text(), timeout_s=30), (
        cluster.diagnostics()
    )
    assert "relay died (status 137)" in said.read_text()
    before = _actor_versions(cluster)
    assert cluster.wait_until(lambda: _all_newer(cluster, before), timeout_s=60), cluster.diagnostics()
    assert cluster.wait_until(lambda: _established(cluster.port_base + 1) == 1, timeout_s=30), cluster.diagnostics()
    cluster.procs["actors"].send_signal(signal.SIGTERM)
    assert cluster.wait_exit("actors", timeout_s=30) is not None
    for k in range(2):
        text = (logs / "logs" / f"actor-{k}.log").read_text()
        taken = re.search(r"weight versions taken: (.*)", text)
        assert taken, text[-2000:]
        counts = dict((how, int(n)) for how, n in re.findall(r"(\w+) (\d+)", taken.group(1)))
        assert counts.get("relay", 0) >= 2, counts
    relay_log = (logs / "logs" / "relay.log").read_text()
    assert re.findall(r"rejected: (.*)", relay_log)[-1] == "none", relay_log[-2000:]  # the restarted relay's last


def test_actors_go_direct_while_the_relay_is_dead_and_back_when_it_returns(cluster: Cluster) -> None:
    keys = _start_servers(cluster)
    _start_relay(cluster, "relay", keys)
    for index in range(2):
        cluster.start_actor(index, "--relay", str(keys / "relay.sock"))
    first = cluster.wait_until(lambda: _all_newer(cluster, {}), timeout_s=90)
    assert first, f"the actors took no weights\n{cluster.diagnostics()}"
    assert cluster.wait_until(lambda: _all_newer(cluster, first), timeout_s=60), cluster.diagnostics()
    os.killpg(cluster.procs["relay"].pid, signal.SIGKILL)
    cluster.wait_exit("relay", timeout_s=10)

    def everyone_says(text: str) -> bool:
        return all(text in cluster.log(f"actor-{i}") for i in range(2))

    assert cluster.wait_until(lambda: everyone_says("the weight relay fails"), timeout_s=30), cluster.diagnostics()
    before = _actor_versions(cluster)
    direct = cluster.wait_until(lambda: _all_newer(cluster, before), timeout_s=60)
    assert direct, f"the actors took no weights without the relay\n{cluster.diagnostics()}"
    assert _established(cluster.port_base + 1) == 2  # each actor on the learner's broadcast now

    _start_relay(cluster, "relay-again", keys)
    back = cluster.wait_until(lambda: everyone_says("the weight relay serves again"), timeout_s=60)
    assert back, cluster.diagnostics()
    assert cluster.wait_until(lambda: _established(cluster.port_base + 1) == 1, timeout_s=10), cluster.diagnostics()
    before = _actor_versions(cluster)
    assert cluster.wait_until(lambda: _all_newer(cluster, before), timeout_s=60), cluster.diagnostics()
    for index in range(2):
        cluster.procs[f"actor-{index}"].send_signal(signal.SIGTERM)
        assert cluster.wait_exit(f"actor-{index}", timeout_s=30) is not None
        taken = re.search(r"weight versions taken: (.*)", cluster.log(f"actor-{index}"))
        assert taken and "relay" in taken.group(1), cluster.log(f"actor-{index}")[-2000:]


def _weights(version: int, run_id: str = "0123456789ab", value: float = 0.5) -> dict:
    arrays = {"q.weight": np.full((2, 4), value, np.float32), "q.bias": np.zeros(2, np.float32)}
    return {"meta": {"version": version, "run_id": run_id}, "arrays": arrays}


def _relay_argv(cluster: Cluster, directory: Path) -> list[str]:
    return [sys.executable, "-m", "actor.relay", "--learner", cluster.learner_address, "--socket-dir", str(directory)]


def test_the_relay_needs_a_private_directory_and_stops_cleanly_on_sigterm(cluster: Cluster, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o755)
    shared.chmod(0o755)
    cluster.start("open-relay", _relay_argv(cluster, shared))
    assert cluster.wait_exit("open-relay", timeout_s=30) == 2
    assert "must be 0700" in cluster.log("open-relay") and not (shared / "relay.sock").exists()

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    cluster.start("relay", _relay_argv(cluster, private))
    assert cluster.wait_until((private / "relay.sock").exists, timeout_s=30), cluster.diagnostics()
    cluster.procs["relay"].send_signal(signal.SIGTERM)
    assert cluster.wait_exit("relay", timeout_s=10) == 0, cluster.diagnostics()
    assert not (private / "relay.sock").exists()
    assert "0 weights received" in cluster.log("relay")


def test_the_relay_refuses_bad_weights_and_passes_on_good_ones(cluster: Cluster, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    ctx = zmq.Context()
    pub = make_socket(ctx, zmq.PUB, hwm=64, heartbeats=False)  # a learner's broadcast that the test controls
    pub.bind(f"tcp://127.0.0.1:{cluster.port_base + 1}")
    local = make_socket(ctx, zmq.SUB, hwm=64, heartbeats=False)
    for kind in ("weights_ref", "stop"):
        local.setsockopt(zmq.SUBSCRIBE, kind_prefix(kind))
    try:
        cluster.start(
            "relay",
            [*_relay_argv(cluster, private), "--max-message-mb", "1"],
        )
        sock = private / "relay.sock"
        assert cluster.wait_until(sock.exists, timeout_s=30), cluster.diagnostics()
        assert sock.stat().st_mode & 0o777 == 0o600
        local.connect(f"ipc://{sock}")
        encode = Encoder("fake-learner")
        refs: list[dict] = []
        big = {"q.weight": np.zeros((2, 4), np.float32), "q.bias": np.zeros(2, np.float32), "x": np.zeros(1 << 19)}

        def publish_until_ref(version: int) -> bool:
            def got() -> bool:
                pub.send_multipart(encode("weights", **_weights(version)))
                while local.poll(50):
                    msg = decode(local.recv_multipart(), expect=("weights_ref", "stop"))
                    refs.append(msg.meta)
                return any(r["version"] == version for r in refs)

            return bool(cluster.wait_until(got, timeout_s=30, interval_s=0.1))

        assert publish_until_ref(1), cluster.diagnostics()
        bad = [
            encode("weights", **_weights(2, value=float("nan"))),  # non-finite
            encode("weights", **_weights(3, run_id="../../tmp/x")),  # would name a file elsewhere
            encode(
                "weights", meta={"version": 4, "run_id": "0123456789ab"}, arrays={"q.bias": np.zeros(3, np.float32)}
            ),
            [kind_prefix("weights") + b"\xc1garbage", b"x"],  # malformed
            encode("weights", meta={"version": 6, "run_id": "0123456789ab"}, arrays=big),  # over 1 MiB: dropped
        ]
        for _ in range(3):
            for frames in bad:
                pub.send_multipart(frames)
            time.sleep(0.2)
        assert publish_until_ref(5), cluster.diagnostics()
        assert {r["version"] for r in refs} <= {1, 5}, refs  # nothing bad passed on, the oversized one included
        path = refs[-1]["path"]
        assert os.stat(path).st_mode & 0o777 == 0o600
        pub.send_multipart(encode("stop", {"reason": "test over"}))
        assert cluster.wait_exit("relay", timeout_s=20) == 0, cluster.diagnostics()
        log = cluster.log("relay")
        rejected = re.findall(r"rejected: (.*)", log)[-1]
        for reason in ("non_finite", "bad_run_id", "layout_mismatch"):
            assert re.search(rf"{reason} [1-9]", rejected), rejected
        assert not os.path.exists(path), "the relay left its weights file behind"
        assert not sock.exists(), "the relay left its socket behind"
    finally:
        local.close(linger=0)
        pub.close(linger=0)
        ctx.term()


def test_a_late_relay_asks_for_the_current_weights_and_is_confirmed_while_the_learner_is_quiet(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A relay started after the learner's last publication has its version at once, and while the
    learner publishes nothing new the learner's `up_to_date` answers show its actors that it is current."""
    import dataclasses

    from common.config import load_config
    from learner.control import ControlServer

    config = load_config("cartpole")
    config = dataclasses.replace(config, net=config.net.with_port_base(cluster.port_base))
    ctx = zmq.Context()
    control = ControlServer(config, ctx)
    control.start()
    local = make_socket(ctx, zmq.SUB, hwm=64, heartbeats=False)
    local.setsockopt(zmq.SUBSCRIBE, kind_prefix("weights_ref"))
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    notices: list[dict] = []

    def heard(predicate) -> bool:
        def check() -> bool:
            while local.poll(50):
                notices.append(decode(local.recv_multipart(), expect=("weights_ref",)).meta)
            return any(predicate(n) for n in notices)

        return bool(cluster.wait_until(check, timeout_s=20, interval_s=0.05))

    try:
        control.set_weights(7, _weights(7)["arrays"])  # published before the relay exists
        cluster.start("relay", _relay_argv(cluster, private))
        sock = private / "relay.sock"
        assert cluster.wait_until(sock.exists, timeout_s=30), cluster.diagnostics()
        local.connect(f"ipc://{sock}")
        assert heard(lambda n: n["version"] == 7 and n["run_id"] == control.run_id), cluster.diagnostics()
        started = time.monotonic()
        assert heard(lambda n: n["version"] == 7 and n.get("confirmed", 0) >= 1), cluster.diagnostics()
        assert time.monotonic() - started < 12, "confirmed later than the relay's asking period allows"
        control.set_weights(8, _weights(8)["arrays"])
        assert heard(lambda n: n["version"] == 8), cluster.diagnostics()
        assert {n["version"] for n in notices} == {7, 8}
        cluster.procs["relay"].send_signal(signal.SIGTERM)
        assert cluster.wait_exit("relay", timeout_s=20) == 0, cluster.diagnostics()
        assert "rejected: none" in cluster.log("relay")
    finally:
        local.close(linger=0)
        control.close()
        ctx.destroy(linger=0)
