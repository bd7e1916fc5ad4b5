"""Shared-memory weights: what one process writes another reads whole, never torn, never someone else's."""

from __future__ import annotations

import multiprocessing as mp
import os
import time

import numpy as np
import pytest

from common.shared_weights import (
    SHM_DIR,
    NonFinite,
    SharedWeightsReader,
    SharedWeightsUnavailable,
    SharedWeightsWriter,
    available,
)

pytestmark = pytest.mark.skipif(not available(), reason=f"{SHM_DIR} is not a writable directory here")


def _arrays(value: float, size: int = 1000) -> dict[str, np.ndarray]:
    return {
        "torso.weight": np.full((size, 3), value, np.float32),
        "head.bias": np.full(7, value, np.float32),
        "steps": np.array(int(value), np.int64),
    }


def test_a_reader_gets_each_newest_version_as_a_private_copy() -> None:
    writer = SharedWeightsWriter("0123abcd", _arrays(0))
    reader = SharedWeightsReader(writer.path, writer.token)
    try:
        assert oct(os.stat(writer.path).st_mode & 0o777) == "0o600"
        assert reader.run_id == "0123abcd"
        assert reader.newest_version() == -1 and reader.read() is None
        for version in (1, 2, 3):
            writer.write(version, _arrays(version))
            assert reader.newest_version() == version
            got_version, got = reader.read()  # type: ignore[misc]
            assert got_version == version
            assert set(got) == {"torso.weight", "head.bias", "steps"}
            assert (got["torso.weight"] == version).all() and got["steps"].shape == ()
        writer.write(4, _arrays(4))
        assert (got["torso.weight"] == 3).all()  # the copy does not follow the file
        with pytest.raises(ValueError, match="layout"):
            writer.write(5, {"other": np.zeros(3, np.float32)})
        with pytest.raises(ValueError):
            writer.write(5, {**_arrays(5), "head.bias": np.zeros(8, np.float32)})
        with pytest.raises(NonFinite):
            writer.write(5, {**_arrays(5), "head.bias": np.full(7, np.nan, np.float32)})
        assert reader.newest_version() == 4  # nothing of it written
        loaded = {}
        assert reader.read_into(lambda views: loaded.update((k, v.copy()) for k, v in views.items())) == 4
        assert (loaded["torso.weight"] == 4).all()
    finally:
        writer.close()
    assert not os.path.exists(writer.path)
    version, got = reader.read()  # type: ignore[misc]
    assert version == 4 and (got["head.bias"] == 4).all()  # a mapping outlives the removed file
    reader.close()


def test_a_slot_being_written_is_skipped_for_the_last_complete_one() -> None:
    writer = SharedWeightsWriter("feed", _arrays(0))
    reader = SharedWeightsReader(writer.path, writer.token)
    try:
        writer.write(1, _arrays(1))
        writer.write(2, _arrays(2))
        writer._slots[1, 0] += 1  # slot 1 holds v2: now "being written"
        assert reader.newest_version() == 1
        version, got = reader.read()  # type: ignore[misc]
        assert version == 1 and (got["torso.weight"] == 1).all()
        writer._slots[0, 0] += 1  # both mid-write: nothing complete to take
        assert reader.read() is None
    finally:
        writer.close()
        reader.close()


def test_a_held_version_is_the_file_itself_until_the_writer_begins_to_overwrite_it() -> None:
    writer = SharedWeightsWriter("face", _arrays(0))
    reader = SharedWeightsReader(writer.path, writer.token)
    try:
        assert reader.hold() is None  # nothing written yet
        writer.write(1, _arrays(1))
        held = reader.hold()
        assert held is not None and held.version == 1 and held.whole()
        assert not held.arrays["torso.weight"].flags.writeable  # in place: the reader's mapping is read-only
        writer.write(2, _arrays(2))  # into the other slot
        assert held.whole() and (held.arrays["torso.weight"] == 1).all()
        writer._slots[0, 0] += 1  # the writer marks v1's slot before changing a byte of it
        assert not held.whole()
        writer._slots[0, 0] -= 1
        writer.write(3, _arrays(3))  # v1's slot again
        assert not held.whole() and (held.arrays["torso.weight"] == 3).all()  # no copy: it changed under us
        newest = reader.hold()
        assert newest is not None and newest.version == 3 and newest.whole()
        writer._slots[:, 0] += 1  # both slots mid-write: nothing to hold
        assert reader.hold() is None
        writer._slots[:, 0] -= 1
        reader.close()
        assert (newest.arrays["head.bias"] == 3).all() and newest.whole()  # held arrays keep the file mapped
    finally:
        writer.close()
        reader.close()


def _write_forever(path_queue: mp.Queue, stop: mp.Event) -> None:
    writer = SharedWeightsWriter("cafe", _arrays(0, size=300_000))
    path_queue.put((writer.path, writer.token))
    version = 0
    try:
        while not stop.is_set():
            version += 1
            writer.write(version, _arrays(version, size=300_000))
    finally:
        writer.close()


def test_reads_racing_a_writer_in_another_process_are_never_torn() -> None:
    """3.6 MB slots rewritten as fast as another process can, for 2 s: every read is one version throughout."""
    ctx = mp.get_context("fork")
    paths, stop = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=_write_forever, args=(paths, stop), daemon=True)
    proc.start()
    try:
        path, token = paths.get(timeout=30)
        reader = SharedWeightsReader(path, token)
        seen, failed, reads = set(), 0, 0
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            reads += 1
            got = reader.read(attempts=1)
            if got is None:
                failed += 1
                continue
            version, arrays = got
            for array in arrays.values():
                assert (array == version).all(), f"a torn read: v{version} mixed with other versions"
            seen.add(version)
        reader.close()
        assert len(seen) > 10, f"the writer did not move on between reads ({len(seen)} versions)"
    finally:
        stop.set()
        proc.join(timeout=10)
    print(f"{len(seen)} versions read whole, {failed} of {reads} reads overtaken (a caller retries later)")


def test_files_that_are_not_the_learners_are_refused(tmp_path) -> None:
    writer = SharedWeightsWriter("beef", _arrays(0))
    try:
        with pytest.raises(SharedWeightsUnavailable, match="another learner|not a weights file"):
            SharedWeightsReader(writer.path, "0" * 16)  # the token in the notice is not this file's
        with pytest.raises(SharedWeightsUnavailable, match="will open"):
            SharedWeightsReader("/etc/passwd", writer.token)
        elsewhere = tmp_path / os.path.basename(writer.path)
        elsewhere.write_bytes(b"x")
        with pytest.raises(SharedWeightsUnavailable, match="will open"):
            SharedWeightsReader(str(elsewhere), writer.token)
        with pytest.raises(SharedWeightsUnavailable, match="cannot open"):
            SharedWeightsReader(f"{SHM_DIR}/distdqn-weights-0-{'1' * 16}", "1" * 16)
    finally:
        writer.close()
    garbage = f"{SHM_DIR}/distdqn-weights-99-{'2' * 16}"
    with open(garbage, "wb") as f:
        f.write(os.urandom(8192))
    try:
        with pytest.raises(SharedWeightsUnavailable, match="not a distdqn weights file"):
            SharedWeightsReader(garbage, "2" * 16)
    finally:
        os.unlink(garbage)


def _create_and_die(paths: mp.Queue) -> None:
    writer = SharedWeightsWriter("dead", _arrays(1))
    paths.put(writer.path)
    paths.close()
    paths.join_thread()  # the path has left before the process dies
    os._exit(0)  # no close(): what SIGKILL leaves behind


def test_a_new_learner_removes_files_of_killed_learners_only() -> None:
    ctx = mp.get_context("fork")
    paths = ctx.Queue()
    proc = ctx.Process(target=_create_and_die, args=(paths,))
    proc.start()
    dead_path = paths.get(timeout=30)
    proc.join(10)
    assert os.path.exists(dead_path)
    live = SharedWeightsWriter("a1", _arrays(1))  # this process's: alive
    try:
        assert not os.path.exists(dead_path), "a killed learner's file survived a new learner's start"
        newer = SharedWeightsWriter("a2", _arrays(2))
        assert os.path.exists(live.path) and os.path.exists(newer.path), "a live learner's file was removed"
        newer.close()
    finally:
        live.close()
        if os.path.exists(dead_path):
            os.unlink(dead_path)
