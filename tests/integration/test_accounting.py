"""No silent loss, measured: under load and faults, each actor's transitions add up exactly at replay.

Real replay, learner and actor processes over real sockets. Faults: the replay server hung (SIGSTOP)
while actors push, an actor hung, an actor killed (SIGKILL) and started again, a producer that sends
garbage and invalid batches, and a shutdown while replay is hung, where an actor still blocked drops what it cannot
send. Afterwards, for every actor that exited, the totals it logged itself must equal the replay
server's ledger for its stream: sent = stored + rejected + dropped + lost, with lost = 0 because no
connection broke. The killed actor's stream stays open; what reached replay of it must still add up.
So does, as documented, the stream of an actor whose stream_end found no room within its 4 s because
replay was still working off the backlog of its hang: then everything that actor sent must be there.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest
import zmq

from common.wire import Encoder

if TYPE_CHECKING:
    from tests.integration.conftest import Cluster

pytestmark = pytest.mark.slow

OVERRIDES = (
    "replay.samples_per_insert=0",  # actors push flat out: replay and the sockets are the bottleneck
    "actor.num_actors=3",
    "actor.send_size=32",
    "net.send_hwm=2",
    "stop.eval_return=1000000",
    "stop.max_wall_s=300",
    "log_interval_s=1",
)
UNCLOSED = "ends without its totals reaching it"
FINAL = re.compile(r"stream ([0-9a-f]+): (\d+) transitions sent, (\d+) dropped unsent")
HANG_S = 2.0  # well under the 5 s heartbeat timeout: a hang must not break connections


def _ledger(cluster: Cluster) -> dict:
    path = cluster.run_dir / "replay" / "accounting.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {"streams": []}


def _streams_storing(cluster: Cluster, actors: set[int]) -> list[dict] | None:
    rows = [r for r in _ledger(cluster)["streams"] if r["actor_index"] in actors and r["stored"] > 0]
    return rows if {r["actor_index"] for r in rows} == actors else None


def _hang(pid: int, seconds: float) -> None:
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def _batch(n: int, action: int = 0) -> dict[str, np.ndarray]:
    return {
        "obs": np.zeros((n, 4), np.float32),
        "action": np.full(n, action, np.int64),
        "reward": np.ones(n, np.float32),
        "discount": np.full(n, 0.97, np.float32),
        "next_obs": np.zeros((n, 4), np.float32),
        "priority": np.ones(n, np.float32),
        "version": np.zeros(n, np.int64),
    }


def _misbehave(ingest_port: int) -> None:
    """A producer with bugs: garbage, batches replay must refuse, and a closed stream of 80."""
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 2000)
        push.connect(f"tcp://127.0.0.1:{ingest_port}")
        send = Encoder("buggy-actor")
        push.send_multipart([b"\xc1 not a header"])
        meta = {"actor_index": 99, "stream": "b0661e5", "count": 16}
        push.send_multipart(send("transitions", {**meta, "sent_before": 0}, _batch(16)))
        push.send_multipart(send("transitions", {**meta, "sent_before": 16}, _batch(16, action=7)))
        nan = _batch(16)
        nan["reward"][0] = np.nan
        push.send_multipart(send("transitions", {**meta, "sent_before": 32}, nan))
        push.send_multipart(send("transitions", {**meta, "sent_before": 48, "count": 32}, _batch(32)))
        push.send_multipart(send("stream_end", {"actor_index": 99, "stream": "b0661e5", "sent": 80, "dropped": 0}))
        push.close()  # linger: delivered before the context goes
    finally:
        ctx.term()


def _actor_pid(cluster: Cluster, name: str) -> int:
    return cluster.procs[name].pid


def test_sent_equals_stored_plus_rejected_plus_dropped_per_actor(cluster: Cluster) -> None:
    cluster.start_replay(*OVERRIDES)
    cluster.start_learner(*OVERRIDES)
    for index in range(3):
        cluster.start_actor(index)
    assert cluster.wait_until(lambda: _streams_storing(cluster, {0, 1, 2}), timeout_s=90), (
        f"actors never reached replay\n{cluster.diagnostics()}"
    )

    # Faults while the actors push as fast as they can.
    _hang(cluster.procs["replay"].pid, HANG_S)
    _hang(_actor_pid(cluster, "actor-1"), HANG_S)
    _misbehave(cluster.port_base + 2)
    os.kill(_actor_pid(cluster, "actor-2"), signal.SIGKILL)
    cluster.wait_exit("actor-2", 10)
    argv = [sys.executable, "-m", "actor", "--learner", cluster.learner_address, "--actor-index", "2"]
    cluster.start("actor-2-again", argv)
    assert cluster.wait_until(lambda: len(_streams_storing(cluster, {2}) or []) >= 2, timeout_s=60), (
        f"the restarted actor never reached replay\n{cluster.diagnostics()}"
    )

    # Stop the actors while replay is hung: what they hold cannot be sent and is dropped, counted.
    replay_pid = cluster.procs["replay"].pid
    os.kill(replay_pid, signal.SIGSTOP)
    try:
        time.sleep(3.5)  # long enough for every actor's socket queue and kernel buffers to fill
        actors = ["actor-0", "actor-1", "actor-2-again"]
        for name in actors:
            cluster.procs[name].send_signal(signal.SIGTERM)
        time.sleep(1.0)  # the actors drop what they hold, then wait (4 s at most) to send their stream_end
    finally:
        os.kill(replay_pid, signal.SIGCONT)
    for name in actors:
        assert cluster.wait_exit(name, 15) == 0, f"{name} did not stop cleanly\n{cluster.diagnostics()}"
    for name in ("learner", "replay"):
        cluster.procs[name].send_signal(signal.SIGTERM)
        assert cluster.wait_exit(name, 15) is not None, f"{name} did not stop\n{cluster.diagnostics()}"

    ledger = _ledger(cluster)
    streams = {row["stream"]: row for row in ledger["streams"]}
    report = "\n".join(json.dumps(row) for row in ledger["streams"])
    actor_dropped, exited_streams = 0, set()
    for name in actors:
        log_text = cluster.log(name)
        found = FINAL.findall(log_text)
        assert found, f"{name} logged no final totals\n{cluster.diagnostics()}"
        stream, sent, dropped = found[-1][0], int(found[-1][1]), int(found[-1][2])
        exited_streams.add(stream)
        row = streams[stream]
        if UNCLOSED in log_text:
            # Documented: replay was still draining the backlog of its hang when the actor's 4 s for the
            # stream_end ran out. The stream stays open, and what the actor sent must still all be there.
            assert not row["closed"] and row["received_upto"] - row["base"] == sent, report
            print(f"{name}: stream {stream} left open (its stream_end found no room in time)")
        else:
            # The actor's own count of what it handed to its socket, against replay's books for that stream.
            assert row["closed"] and row["sent"] == sent and row["actor_dropped"] == dropped, (
                f"{report}\n{cluster.diagnostics()}"
            )
        rejected = sum(row["rejected"].values())
        assert row["stored"] + rejected + row["dropped"] + row["lost"] == sent, report
        assert row["lost"] == 0, f"{name}: no connection broke, yet transitions were lost\n{report}"
        assert row["stored"] > 0, report
        actor_dropped += dropped
    # Whether an actor was still blocked when its SIGTERM came depends on how fast it filled its buffers
    # on these shared cores; when one was, its drop is in the totals checked above.
    print(f"actors dropped {actor_dropped} transitions at the hung-replay shutdown")

    # The killed actor: its stream never closed, but everything that reached replay adds up, nothing lost.
    (killed,) = [r for r in ledger["streams"] if r["actor_index"] == 2 and r["stream"] not in exited_streams]
    assert killed["balanced"] and killed["lost"] == 0 and killed["stored"] > 0, report
    received = killed["received_upto"] - killed["base"]
    assert killed["stored"] + sum(killed["rejected"].values()) + killed["dropped"] == received, report

    # The buggy producer: every one of its 80 transitions is in exactly one column.
    buggy = streams["b0661e5"]
    assert buggy["stored"] == 48 and buggy["rejected"] == {"bad_action": 16, "non_finite": 16}, report
    assert buggy["lost"] == 0 and buggy["dropped"] == 0 and buggy["balanced"] and buggy["sent"] == 80
    assert ledger["rejected_messages"].get("bad_header") == 1
    # Nothing else is in the books: every stream seen belongs to one of the producers above.
    assert len(ledger["streams"]) == 5, report
