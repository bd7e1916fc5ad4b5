"""Files in /dev/shm another user could plant: readers refuse them, and never hang on them."""

from __future__ import annotations

import dataclasses
import os
import threading

import numpy as np
import pytest
import zmq

from common import shared_batches
from common.config import load_config
from common.envs import EnvSpec
from common.shared_batches import BatchFile
from common.shared_weights import SHM_DIR, SharedWeightsReader, SharedWeightsUnavailable, SharedWeightsWriter, available
from common.sockets import free_port_base
from common.wire import decode, encode

pytestmark = pytest.mark.skipif(not available(), reason=f"{SHM_DIR} is not a writable directory here")
NOBODY = 65534


def _needs_root() -> None:
    if os.geteuid() != 0:
        print("skipped: giving a file to another user needs root")
        pytest.skip("giving a file to another user needs root")


def _in_thread(call, timeout: float = 10.0):
    """`call()`'s result or exception; an AssertionError if it is still running after `timeout` (hung)."""
    out: dict = {}

    def run() -> None:
        try:
            out["value"] = call()
        except BaseException as err:  # handed to the test
            out["error"] = err

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    return thread, out


def _writer() -> SharedWeightsWriter:
    writer = SharedWeightsWriter("beef", {"w": np.zeros(8, np.float32)})
    writer.write(1, {"w": np.full(8, 666, np.float32)})
    return writer


def test_a_fifo_named_like_a_weights_file_does_not_hang_the_reader() -> None:
    token = "8" * 16
    fifo = f"{SHM_DIR}/distdqn-weights-beef-{token}"
    os.mkfifo(fifo, 0o600)
    try:
        thread, out = _in_thread(lambda: SharedWeightsReader(fifo, token))
        if thread.is_alive():
            os.close(os.open(fifo, os.O_RDWR))  # let the hung open finish before failing
            thread.join(5)
            raise AssertionError("opening a FIFO hung the reader")
        assert isinstance(out.get("error"), SharedWeightsUnavailable), out
        assert "not a regular file" in str(out["error"])
    finally:
        os.unlink(fifo)


def test_a_fifo_named_like_a_batch_file_does_not_hang_a_learner_removing_stale_files() -> None:
    fifo = f"{SHM_DIR}/distdqn-batches-{'7' * 32}"
    os.mkfifo(fifo, 0o600)
    try:
        thread, out = _in_thread(lambda: shared_batches.remove_stale())
        if thread.is_alive():
            os.close(os.open(fifo, os.O_RDWR))
            thread.join(5)
            raise AssertionError("a FIFO hung the removal of stale batch files")
        assert "error" not in out and fifo not in out["value"]
    finally:
        os.unlink(fifo)


def test_another_users_weights_file_is_refused() -> None:
    """What a squatter on the learner's port could name once the learner died: a valid file, not ours."""
    _needs_root()
    writer = _writer()
    try:
        os.chown(writer.path, NOBODY, NOBODY)
        os.chmod(writer.path, 0o644)
        with pytest.raises(SharedWeightsUnavailable, match="not private to this user"):
            SharedWeightsReader(writer.path, writer.token)
    finally:
        writer.close()


def test_a_weights_file_others_can_write_is_refused() -> None:
    writer = _writer()
    try:
        os.chmod(writer.path, 0o666)
        with pytest.raises(SharedWeightsUnavailable, match="not private to this user"):
            SharedWeightsReader(writer.path, writer.token)
    finally:
        writer.close()


def test_a_symlink_to_a_weights_file_is_refused() -> None:
    writer = _writer()
    link = f"{SHM_DIR}/distdqn-weights-beef-{writer.token}".replace("beef", "beee")
    os.symlink(writer.path, link)
    try:
        with pytest.raises(SharedWeightsUnavailable, match="cannot open"):
            SharedWeightsReader(link, writer.token)
        with pytest.raises(SharedWeightsUnavailable, match="will open"):
            SharedWeightsReader(f"{SHM_DIR}/../shm/{os.path.basename(writer.path)}", writer.token)
    finally:
        os.unlink(link)
        writer.close()


def test_knowing_a_batch_files_name_does_not_give_its_token() -> None:
    file = BatchFile(4, (4,), np.dtype(np.float32), slots=2)
    try:
        assert file.token not in file.path  # the name is in every listing of /dev/shm; the header is private
    finally:
        file.close()


def _fill(port: int) -> None:
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.connect(f"tcp://127.0.0.1:{port}")
    for seq in range(8):
        obs = np.full((64, 4), seq, np.float32)
        arrays = {
            "obs": obs,
            "action": np.zeros(64, np.int64),
            "reward": np.ones(64, np.float32),
            "discount": np.full(64, 0.97, np.float32),
            "next_obs": obs,
            "priority": np.ones(64, np.float32),
            "version": np.zeros(64, np.int64),
        }
        push.send_multipart(encode("transitions", {"actor_index": 0}, arrays, seq=seq + 1))
    push.close(linger=5000)
    ctx.term()


def _sample(sock: zmq.Socket, meta: dict):
    sock.send_multipart(encode("sample", {"batch_size": 32, "beta": 0.4, **meta}))
    assert sock.poll(10_000), "replay never answered"
    return decode(sock.recv_multipart(copy=False))


def test_a_wrong_token_does_not_make_replay_refuse_the_learners_file_afterwards() -> None:
    """Real ReplayServer, real sockets: a request with a wrong token is refused alone."""
    from replay.server import ReplayServer

    overrides = ["replay.min_size=256", "replay.capacity=1000", "replay.samples_per_insert=0"]
    config = load_config("cartpole", overrides)
    config = dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))
    spec = EnvSpec((4,), np.dtype(np.float32), 2)
    server = ReplayServer(config, spec)
    stop = threading.Event()
    serving = threading.Thread(target=server.run, args=(stop,), kwargs={"log_interval_s": 60}, daemon=True)
    serving.start()
    file = BatchFile(32, (4,), np.dtype(np.float32), slots=2)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        _fill(config.net.ingest_port)
        sock.connect(f"tcp://127.0.0.1:{config.net.sample_port}")
        right = {"shm_path": file.path, "shm_token": file.token, "shm_slot": 0}
        wrong = {**right, "shm_token": "0" * 32}
        for meta, kind in ((wrong, "batch"), (right, "batch_ref"), (wrong, "batch"), (right, "batch_ref")):
            reply = _sample(sock, meta)
            assert reply.kind == kind, (meta["shm_token"], reply.meta)
            if kind == "batch":
                assert "token" in reply.meta["shm_refused"]
        assert server.batches_by_shared_memory == 2 and server.batch_files.refused == 2
    finally:
        sock.close(linger=0)
        ctx.destroy(linger=0)
        stop.set()
        serving.join(5)
        server.close()
        file.close()
