"""Replay snapshots: exact round trips, atomic and durable writes, fallback to the previous file, config checks.

The server-level tests run a real in-process ReplayServer on loopback sockets (as tests/replay/test_server.py
does), so `snapshot_request` / `snapshot_done` and the exit snapshot are exercised end to end.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from common.config import RunConfig, load_config
from common.envs import EnvSpec
from common.errors import StartupError
from common.sockets import free_port_base
from common.wire import Encoder, decode
from replay import snapshot as snap
from replay.buffer import ReplayBuffer
from replay.server import ACTOR_COUNTS_KEY, ReplayServer, transition_fields
from tests.helpers import wait_for

SPEC = EnvSpec((4,), np.dtype(np.float32), 2)


# ---- helpers -------------------------------------------------------------------------------------


def _config(*overrides: str) -> RunConfig:
    base = ["replay.min_size=128", "replay.capacity=1000", "replay.samples_per_insert=0", *overrides]
    config = load_config("cartpole", base)
    return dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))


def _transitions(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "obs": rng.standard_normal((n, 4)).astype(np.float32),
        "action": rng.integers(0, 2, n).astype(np.int64),
        "reward": rng.standard_normal(n).astype(np.float32),
        "discount": np.full(n, 0.97, dtype=np.float32),
        "next_obs": rng.standard_normal((n, 4)).astype(np.float32),
        "priority": rng.uniform(0.1, 3.0, n).astype(np.float32),
        "version": np.zeros(n, dtype=np.int64),
    }


def _busy_buffer(capacity: int = 50) -> ReplayBuffer:
    """Wrapped around, sampled, priorities updated: every part of the state is non-trivial."""
    buf = ReplayBuffer(capacity, transition_fields(SPEC), alpha=0.6, seed=3)
    for seed in range(4):
        batch = _transitions(20, seed)
        buf.add({k: batch[k] for k in transition_fields(SPEC)}, batch["priority"])
    result = buf.sample(16, 0.5)
    buf.update_priorities(result.indices, result.ids, np.linspace(0.5, 7.0, 16))
    return buf


def _state(buf: ReplayBuffer, **extra: np.ndarray) -> dict:
    state = buf.state_dict()
    state.update(extra)
    return state


def _assert_state_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)
        assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, key


# ---- the file format -----------------------------------------------------------------------------
def test_round_trip_is_exact_and_sampling_continues_identically(tmp_path: Path) -> None:
    buf = _busy_buffer()
    counts = np.array([[0, 40], [3, 40]], dtype=np.int64)
    info = snap.write_snapshot(tmp_path, _state(buf, **{ACTOR_COUNTS_KEY: counts}))
    assert info.path == tmp_path / snap.SNAPSHOT
    assert (info.transitions, info.inserted) == (50, 80)
    assert info.bytes == info.path.stat().st_size > 0

    loaded, path = snap.load_snapshot(tmp_path)
    assert path == info.path
    assert int(loaded.pop(snap.FORMAT_KEY)) == snap.FORMAT_VERSION
    np.testing.assert_array_equal(loaded.pop(ACTOR_COUNTS_KEY), counts)
    _assert_state_equal(buf.state_dict(), loaded)

    fresh = ReplayBuffer(50, transition_fields(SPEC), alpha=0.6, seed=12345)  # another seed: the RNG is restored
    fresh.load_state_dict(loaded)
    _assert_state_equal(buf.state_dict(), fresh.state_dict())
    for _ in range(3):
        a, b = buf.sample(32, 0.4), fresh.sample(32, 0.4)
        for x, y in ((a.indices, b.indices), (a.ids, b.ids), (a.weights, b.weights)):
            np.testing.assert_array_equal(x, y)
        for name in a.data:
            np.testing.assert_array_equal(a.data[name], b.data[name])


def test_write_is_atomic_durable_and_keeps_the_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    first = _busy_buffer()
    snap.write_snapshot(tmp_path, first.state_dict())
    second = _busy_buffer()
    second.add({k: v[:5] for k, v in _transitions(5, 9).items() if k in transition_fields(SPEC)})
    snap.write_snapshot(tmp_path, second.state_dict())

    # Only the two snapshots remain: no temp file, ever, and the older one is kept.
    assert sorted(p.name for p in tmp_path.iterdir()) == [snap.SNAPSHOT, snap.PREVIOUS]
    assert int(snap.load_snapshot(tmp_path)[0]["inserted_total"]) == 85
    with np.load(tmp_path / snap.PREVIOUS, allow_pickle=False) as prev:
        assert int(prev["inserted_total"]) == 80
    # Each write fsyncs its temp file (before the rename) and then the directory (after it).
    assert len(synced) == 4
    for file_sync, dir_sync in (synced[0:2], synced[2:4]):
        assert Path(file_sync).name.startswith(".snapshot.npz.tmp-")
        assert Path(dir_sync) == tmp_path


def test_failed_or_killed_writes_leave_no_temp_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snap.write_snapshot(tmp_path, _busy_buffer().state_dict())
    (tmp_path / ".snapshot.npz.tmp-99999").write_bytes(b"left by a writer killed mid-write")

    def disk_full(*_args: object, **_kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(snap.np, "savez", disk_full)
    with pytest.raises(OSError, match="No space"):
        snap.write_snapshot(tmp_path, _busy_buffer().state_dict())
    # The failed write removed its own temp file and the stale one, and left the good snapshot alone.
    assert sorted(p.name for p in tmp_path.iterdir()) == [snap.SNAPSHOT]
    assert int(snap.load_snapshot(tmp_path)[0]["inserted_total"]) == 80


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip_middle(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


def _not_a_snapshot(path: Path) -> None:
    np.savez(path, something=np.arange(3))


@pytest.mark.parametrize("damage", [_truncate, _flip_middle, _not_a_snapshot], ids=["torn", "bit-rot", "foreign"])
def test_damaged_newest_falls_back_to_previous(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[Path], None]
) -> None:
    older = _busy_buffer()
    snap.write_snapshot(tmp_path, older.state_dict())
    newer = _busy_buffer()
    newer.add({k: v for k, v in _transitions(7, 11).items() if k in transition_fields(SPEC)})
    snap.write_snapshot(tmp_path, newer.state_dict())
    damage(tmp_path / snap.SNAPSHOT)

    with caplog.at_level(logging.WARNING, logger="replay.snapshot"):
        loaded, path = snap.load_snapshot(tmp_path)
    assert path == tmp_path / snap.PREVIOUS
    assert "snapshot.npz is unreadable" in caplog.text
    loaded.pop(snap.FORMAT_KEY)
    _assert_state_equal(older.state_dict(), loaded)


def test_nothing_readable_is_none(tmp_path: Path) -> None:
    assert snap.load_snapshot(tmp_path) is None
    (tmp_path / snap.SNAPSHOT).write_bytes(b"PK\x03\x04 not really")
    assert snap.load_snapshot(tmp_path) is None


# ---- the server ----------------------------------------------------------------------------------
@pytest.fixture
def run_server() -> Iterator[Callable[..., ReplayServer]]:
    """Start in-process servers (real sockets); every one is stopped and closed at teardown."""
    running: list[tuple[ReplayServer, threading.Event, threading.Thread]] = []

    def start(config: RunConfig, **kwargs: object) -> ReplayServer:
        srv = ReplayServer(config, SPEC, **kwargs)
        stop = threading.Event()
        thread = threading.Thread(target=srv.run, args=(stop,), kwargs={"log_interval_s": 60}, daemon=True)
        thread.start()
        running.append((srv, stop, thread))
        return srv

    yield start
    for srv, stop, thread in running:
        stop.set()
        thread.join(5)
        srv.close()


def _request(dealer: zmq.Socket, enc: Encoder, kind: str, timeout_ms: int = 5000):
    dealer.send_multipart(enc(kind))
    assert dealer.poll(timeout_ms), f"no reply to {kind}"
    return decode(dealer.recv_multipart())


def test_server_snapshot_on_request_then_restore_is_exact(tmp_path: Path, run_server) -> None:
    config = _config()
    srv = run_server(config, run_dir=tmp_path)
    ctx = zmq.Context()
    try:
        push = ctx.socket(zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{config.net.ingest_port}")
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(f"tcp://127.0.0.1:{config.net.sample_port}")
        enc, actor = Encoder("test"), Encoder("actor")
        for i in range(25):  # 1600 transitions: the 1000-slot ring wraps
            push.send_multipart(actor("transitions", {"actor_index": i % 3}, _transitions(64, i)))
        wait_for(lambda: srv.buffer.inserted_total == 1600)
        dealer.send_multipart(enc("sample", {"batch_size": 128, "beta": 0.5}))
        assert dealer.poll(5000)
        decode(dealer.recv_multipart(), expect=("batch",))

        done = _request(dealer, enc, "snapshot_request")
        assert done.kind == "snapshot_done", done.meta
        assert done.meta["path"] == str(tmp_path / "replay" / snap.SNAPSHOT)
        assert (done.meta["transitions"], done.meta["inserted"]) == (1000, 1600)
        # The loop is idle now, so the live buffer still equals what was written.
        expected = srv.buffer.state_dict()
        expected_actors = dict(srv.stored_by_actor)
    finally:
        ctx.destroy(linger=0)

    restored = ReplayServer(_config(), SPEC, run_dir=tmp_path, restore=True)
    try:
        _assert_state_equal(expected, restored.buffer.state_dict())
        assert dict(restored.stored_by_actor) == expected_actors == {0: 576, 1: 512, 2: 512}
    finally:
        restored.close()


def test_server_without_run_dir_refuses_snapshot_requests(run_server) -> None:
    config = _config()
    run_server(config)
    ctx = zmq.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.connect(f"tcp://127.0.0.1:{config.net.sample_port}")
        reply = _request(dealer, Encoder("test"), "snapshot_request")
        assert reply.kind == "error" and reply.meta["reason"] == "snapshots_disabled"
        assert "--run-dir" in reply.meta["detail"]
    finally:
        ctx.destroy(linger=0)
    with pytest.raises(StartupError, match="--restore needs --run-dir"):
        ReplayServer(_config(), SPEC, restore=True)


def test_server_snapshots_on_a_timer_and_at_exit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="replay")
    config = _config("replay.snapshot_interval_s=0.2")
    srv = ReplayServer(config, SPEC, run_dir=tmp_path)
    stop = threading.Event()
    thread = threading.Thread(target=srv.run, args=(stop,), kwargs={"log_interval_s": 60}, daemon=True)
    thread.start()
    target = tmp_path / "replay" / snap.SNAPSHOT
    ctx = zmq.Context()
    try:
        wait_for(target.exists)  # the timer, with nothing stored yet
        push = ctx.socket(zmq.PUSH)
        push.connect(f"tcp://127.0.0.1:{config.net.ingest_port}")
        push.send_multipart(Encoder("actor")("transitions", {"actor_index": 0}, _transitions(64, 0)))
        wait_for(lambda: srv.buffer.inserted_total == 64)
    finally:
        ctx.destroy(linger=0)
        stop.set()
        thread.join(5)
        srv.close()
    # Whatever the timer last wrote, a clean stop writes the final state, and each write is logged.
    with np.load(target, allow_pickle=False) as final:
        assert int(final["inserted_total"]) == 64 and int(final["size"]) == 64
    assert "snapshot (timer): 0 transitions" in caplog.text
    assert "snapshot (exit): 64 transitions (64 inserted so far)" in caplog.text


def test_restore_without_a_snapshot_starts_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="replay.server"):
        srv = ReplayServer(_config(), SPEC, run_dir=tmp_path, restore=True)
    try:
        assert srv.buffer.size == 0 and srv.buffer.inserted_total == 0
        assert "no readable snapshot" in caplog.text
    finally:
        srv.close()


@pytest.mark.parametrize(
    ("overrides", "spec", "mentions"),
    [
        (["replay.capacity=500"], SPEC, "capacity=50 does not match buffer's 500"),
        (["replay.alpha=0.5"], SPEC, "alpha"),
        ([], EnvSpec((5,), np.dtype(np.float32), 2), "data.obs"),
        ([], EnvSpec((4,), np.dtype(np.float64), 2), "data.obs"),
    ],
    ids=["capacity", "alpha", "obs-shape", "obs-dtype"],
)
def test_snapshot_that_does_not_fit_the_config_is_a_startup_error(
    tmp_path: Path, overrides: list[str], spec: EnvSpec, mentions: str
) -> None:
    # Everything fits the 50-slot snapshot except the one setting under test.
    config = _config("replay.capacity=50", "replay.min_size=32", "learner.batch_size=32", *overrides)
    snap.write_snapshot(tmp_path / "replay", _busy_buffer().state_dict())
    with pytest.raises(StartupError) as caught:
        ReplayServer(config, spec, run_dir=tmp_path, restore=True)
    message = str(caught.value)
    assert "\n" not in message
    assert "snapshot.npz does not match this server's config" in message
    assert mentions in message
