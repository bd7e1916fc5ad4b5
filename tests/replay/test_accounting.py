"""Per-stream accounting: the ledger's arithmetic, and the replay server keeping it over real sockets."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from common.config import load_config
from common.envs import EnvSpec
from common.sockets import free_port_base
from common.wire import Encoder, encode
from replay.accounting import Ledger
from replay.server import ReplayServer
from tests.helpers import wait_for

SPEC = EnvSpec((4,), np.dtype(np.float32), 2)


def _meta(sent_before: int, count: int, stream: str = "s1", actor: int = 0) -> dict:
    return {"actor_index": actor, "stream": stream, "sent_before": sent_before, "count": count}


# ---- the ledger alone -----------------------------------------------------------------------------
def test_a_gap_is_lost_and_the_end_closes_the_books() -> None:
    ledger = Ledger()
    record, ok = ledger.arrived(_meta(0, 10), 10)
    assert ok
    record.stored += 10
    record, ok = ledger.arrived(_meta(25, 5), 5)  # 15 transitions (10..24) never arrived
    assert ok and record.lost == 15
    record.rejected["bad_action"] += 5
    ledger.ended({"actor_index": 0, "stream": "s1", "sent": 40, "dropped": 3})  # 30..39 never arrived either
    assert record.closed and record.lost == 25 and record.actor_dropped == 3
    assert record.balanced() and record.stored + 5 + record.lost == 40


def test_a_late_message_fills_its_gap_and_a_duplicate_does_not() -> None:
    ledger = Ledger()
    record, _ = ledger.arrived(_meta(0, 10), 10)
    record, _ = ledger.arrived(_meta(30, 10), 10)  # 10..29 missing: lost, for now
    assert record.lost == 20
    record, ok = ledger.arrived(_meta(10, 10), 10)  # queued on a connection that was replaced: it arrived
    assert ok and record.lost == 10 and record.gaps == [[20, 30]]
    assert not ledger.arrived(_meta(10, 10), 10)[1]  # the same again: a duplicate
    assert not ledger.arrived(_meta(15, 10), 10)[1]  # overlapping what arrived
    ledger.ended({"actor_index": 0, "stream": "s1", "sent": 50, "dropped": 0})
    assert record.lost == 20 and ledger.arrived(_meta(40, 10), 10)[1]  # the tail, after the end
    assert record.lost == 10 and record.gaps == [[20, 30]]
    record.stored += 40
    assert record.balanced()


def test_duplicates_and_messages_after_the_end_are_out_of_order() -> None:
    ledger = Ledger()
    ledger.arrived(_meta(0, 10), 10)
    assert not ledger.arrived(_meta(0, 10), 10)[1]  # a repeat
    ledger.ended({"actor_index": 0, "stream": "s1", "sent": 10, "dropped": 0})
    assert not ledger.arrived(_meta(10, 4), 4)[1]  # after the end


def test_a_stream_first_seen_midway_counts_from_there() -> None:
    ledger = Ledger()
    record, _ = ledger.arrived(_meta(1000, 8), 8)
    record.stored += 8
    assert record.lost == 0 and record.balanced()


def test_an_unbalanced_record_is_reported() -> None:
    ledger = Ledger()
    record, _ = ledger.arrived(_meta(0, 8), 8)
    record.stored += 7  # one transition unaccounted for: exactly what the accounting exists to catch
    assert not record.balanced()
    assert "UNBALANCED" in ledger.summary_lines()[0]


def test_the_ledger_survives_a_snapshot_round_trip() -> None:
    ledger = Ledger()
    record, _ = ledger.arrived(_meta(0, 8, stream="abc", actor=2), 8)
    record.stored += 6
    record.rejected["bad_action"] += 2
    ledger.ended({"actor_index": 2, "stream": "abc", "sent": 12, "dropped": 1})
    restored = Ledger.from_array(ledger.to_array())
    assert restored.to_json() == ledger.to_json()


# ---- the server ----------------------------------------------------------------------------------
def _transitions(n: int, *, action: int = 0, priority: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(n)
    return {
        "obs": rng.standard_normal((n, 4)).astype(np.float32),
        "action": np.full(n, action, dtype=np.int64),
        "reward": np.ones(n, dtype=np.float32),
        "discount": np.full(n, 0.97, dtype=np.float32),
        "next_obs": rng.standard_normal((n, 4)).astype(np.float32),
        "priority": np.full(n, priority, dtype=np.float32),
        "version": np.zeros(n, dtype=np.int64),
    }


class _Running:
    def __init__(self, server: ReplayServer) -> None:
        self.server = server
        self.stop = threading.Event()
        self.thread = threading.Thread(target=server.run, args=(self.stop,), kwargs={"log_interval_s": 60})
        self.thread.start()

    def finish(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.server.close()


@pytest.fixture
def config():
    config = load_config(
        "cartpole", ["replay.min_size=128", "replay.capacity=1000", "replay.samples_per_insert=0", "actor.send_size=64"]
    )
    return dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))


@pytest.fixture
def push_ctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def test_every_transition_lands_in_one_column(config, push_ctx: zmq.Context, tmp_path: Path) -> None:
    running = _Running(ReplayServer(config, SPEC, run_dir=tmp_path))
    push = push_ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{config.net.ingest_port}")
    send = Encoder("actor-7")
    nan_priorities = _transitions(16)
    nan_priorities["priority"][3] = np.nan  # a diverged network: refused by the decoder, still attributed
    messages = [
        (_meta(0, 32), _transitions(32)),  # stored
        (_meta(32, 16), _transitions(16, action=5)),  # rejected: bad_action
        (_meta(48, 16), nan_priorities),  # rejected: non_finite
        # 64..79 are never sent: lost
        (_meta(80, 20), _transitions(20)),  # stored
        (_meta(80, 20), _transitions(20)),  # a repeat: out of order, not part of the stream
        ({**_meta(100, 9), "count": 8}, _transitions(9)),  # count disagrees with the rows
    ]
    for meta, arrays in messages:
        push.send_multipart(send("transitions", meta, arrays))
    push.send_multipart([b"\xc1 not msgpack"])  # no header: counted, but nobody's
    push.send_multipart(send("stream_end", {"actor_index": 0, "stream": "s1", "sent": 130, "dropped": 4}))
    server = running.server
    wait_for(lambda: server.ledger.streams.get((0, "s1")) is not None and server.ledger.streams[(0, "s1")].closed)
    running.finish()

    record = server.ledger.streams[(0, "s1")]
    assert record.stored == 52 and server.buffer.inserted_total == 52
    assert dict(record.rejected) == {"bad_action": 16, "non_finite": 16}
    # 64..79 missing, then 100..129 (the bad-count message and what it claimed never count as sent)
    assert record.lost == 16 + 30 and record.dropped == 0
    assert record.sent == 130 and record.actor_dropped == 4 and record.balanced()
    assert server.rejected["out_of_order"] == 1 and server.rejected["bad_count"] == 1
    assert server.rejected["bad_header"] == 1
    written = json.loads((tmp_path / "replay" / "accounting.json").read_text())
    (row,) = written["streams"]
    assert row["stored"] == 52 and row["lost"] == 46 and row["balanced"] and row["closed"]
    assert written["totals"]["lost"] == 46


def test_what_is_still_queued_at_a_stop_is_dropped_and_counted(config, push_ctx: zmq.Context) -> None:
    # The rate limiter holds inserts back (no learner samples), so messages queue up in the server.
    config = dataclasses.replace(config, replay=dataclasses.replace(config.replay, samples_per_insert=1.0))
    running = _Running(ReplayServer(config, SPEC))
    push = push_ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{config.net.ingest_port}")
    send = Encoder("actor-1")
    sent = 0
    for _ in range(12):
        push.send_multipart(send("transitions", _meta(sent, 64, stream="q", actor=1), _transitions(64)))
        sent += 64
    push.send_multipart(send("stream_end", {"actor_index": 1, "stream": "q", "sent": sent, "dropped": 0}))
    server = running.server
    wait_for(lambda: server.buffer.inserted_total > 0 and server._held is not None)
    running.finish()
    record = server.ledger.streams[(1, "q")]
    assert record.closed and record.dropped > 0 and record.stored + record.dropped == sent
    assert record.lost == 0 and record.balanced()


def test_a_stream_end_sent_after_the_stop_still_closes_the_books(config, push_ctx, tmp_path: Path) -> None:
    # The learner exits, replay is told to stop, and the actors' flush and stream_end come a moment later.
    running = _Running(ReplayServer(config, SPEC, run_dir=tmp_path))
    push = push_ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{config.net.ingest_port}")
    send = Encoder("actor-2")
    push.send_multipart(send("transitions", _meta(0, 64, stream="late", actor=2), _transitions(64)))
    server = running.server
    wait_for(lambda: server.buffer.inserted_total == 64)
    running.stop.set()
    time.sleep(1.0)
    assert running.thread.is_alive(), "replay stopped reading while a stream was still open"
    push.send_multipart(send("transitions", _meta(64, 64, stream="late", actor=2), _transitions(64)))
    push.send_multipart(send("stream_end", {"actor_index": 2, "stream": "late", "sent": 128, "dropped": 0}))
    running.thread.join(config.replay.stop_grace_s)
    assert not running.thread.is_alive(), "replay waited on after every stream had ended"
    server.close()
    record = server.ledger.streams[(2, "late")]
    assert record.closed and record.stored == 64 and record.dropped == 64 and record.lost == 0
    (row,) = json.loads((tmp_path / "replay" / "accounting.json").read_text())["streams"]
    assert row["closed"] and row["balanced"] and row["dropped"] == 64


def test_a_stream_that_never_ends_holds_the_stop_only_for_the_grace(config, push_ctx) -> None:
    config = dataclasses.replace(config, replay=dataclasses.replace(config.replay, stop_grace_s=0.5))
    running = _Running(ReplayServer(config, SPEC))
    push = push_ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{config.net.ingest_port}")
    push.send_multipart(Encoder("actor-3")("transitions", _meta(0, 64, stream="dead", actor=3), _transitions(64)))
    wait_for(lambda: running.server.buffer.inserted_total == 64)
    running.finish()  # joins for at most 10 s
    assert not running.thread.is_alive()
    assert not running.server.ledger.streams[(3, "dead")].closed


def test_a_restored_server_counts_what_its_predecessor_lost(config, push_ctx: zmq.Context, tmp_path: Path) -> None:
    config = dataclasses.replace(config, replay=dataclasses.replace(config.replay, snapshot_interval_s=3600.0))
    running = _Running(ReplayServer(config, SPEC, run_dir=tmp_path))
    push = push_ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{config.net.ingest_port}")
    send = Encoder("actor-2")
    for i in range(3):
        push.send_multipart(send("transitions", _meta(64 * i, 64, stream="r", actor=2), _transitions(64)))
    wait_for(lambda: running.server.buffer.inserted_total == 192)
    running.finish()  # snapshot at exit holds 192 transitions and the ledger
    push.close(linger=0)

    restored = ReplayServer(config, SPEC, run_dir=tmp_path, restore=True)
    assert restored.ledger.streams[(2, "r")].stored == 192
    running = _Running(restored)
    push = push_ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{config.net.ingest_port}")
    # 192..319 went to the old server after its snapshot (or were in flight when it died): gone.
    push.send_multipart(send("transitions", _meta(320, 64, stream="r", actor=2), _transitions(64)))
    push.send_multipart(send("stream_end", {"actor_index": 2, "stream": "r", "sent": 384, "dropped": 0}))
    wait_for(lambda: restored.ledger.streams[(2, "r")].closed)
    running.finish()
    record = restored.ledger.streams[(2, "r")]
    assert (record.stored, record.lost) == (256, 128) and record.balanced()


def test_an_unnumbered_producer_is_still_counted(config, push_ctx: zmq.Context) -> None:
    running = _Running(ReplayServer(config, SPEC))
    push = push_ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{config.net.ingest_port}")
    push.send_multipart(encode("transitions", {"actor_index": 4}, _transitions(8)))
    push.send_multipart(encode("transitions", {"actor_index": 4}, _transitions(8, action=9)))
    wait_for(lambda: sum(running.server.rejected.values()) == 1 and running.server.buffer.inserted_total == 8)
    running.finish()
    (record,) = running.server.ledger.streams.values()
    assert record.stored == 8 and record.rejected["bad_action"] == 8 and record.balanced()
