"""The learner's batch file and what the replay server agrees to write into (common/shared_batches.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import msgpack
import numpy as np
import pytest

from common import shared_batches
from common.shared_batches import SHM_DIR, BatchFile, BatchFileMapping, SharedBatchesUnavailable, available
from common.shm_files import HEADER, LAYOUT_AT

pytestmark = pytest.mark.skipif(not available(), reason=f"{SHM_DIR} is not a writable directory here")

OBS = (4, 84, 84)
U8 = np.dtype(np.uint8)


@pytest.fixture
def batch_file():
    file = BatchFile(32, OBS, U8, slots=3)
    yield file
    file.close()


def test_what_replay_writes_into_a_slot_is_what_the_learner_reads(batch_file: BatchFile) -> None:
    assert oct(os.stat(batch_file.path).st_mode & 0o777) == "0o600"
    mapping = BatchFileMapping(batch_file.path, batch_file.token, 32, OBS, U8)
    try:
        assert mapping.slots == 3
        rng = np.random.default_rng(0)
        written = {}
        for slot in range(3):
            views = mapping.views(slot)
            assert list(views) == ["obs", "action", "reward", "discount", "next_obs", "weight", "index", "id"]
            for name, view in views.items():
                obs = name in ("obs", "next_obs")
                assert view.shape == ((32, *OBS) if obs else (32,)) and (view.dtype == U8) == obs
                view[...] = written[slot, name] = rng.integers(0, 256, view.shape).astype(view.dtype)
        for (slot, name), array in written.items():
            np.testing.assert_array_equal(batch_file.views(slot)[name], array)
        with pytest.raises(IndexError):
            mapping.views(3)
    finally:
        mapping.close()


@pytest.mark.parametrize(
    "change, reason",
    [
        ("token", "token is not this file"),
        ("batch_size", "not batches of 64"),
        ("obs_shape", "not batches"),
        ("obs_dtype", "not batches"),
        ("outside", "will open"),
        ("mode", "not private"),
        ("owner", "not private"),
        ("symlink", "cannot open"),
        ("gone", "cannot open"),
    ],
)
def test_replay_writes_only_into_exactly_the_file_the_request_describes(
    batch_file: BatchFile, tmp_path, change: str, reason: str
) -> None:
    path, token = batch_file.path, batch_file.token
    size, shape, dtype = 32, OBS, U8
    if change == "token":
        token = "f" * 32
    elif change == "batch_size":
        size = 64
    elif change == "obs_shape":
        shape = (4, 84, 83)
    elif change == "obs_dtype":
        dtype = np.dtype(np.float32)
    elif change == "outside":
        path = str(tmp_path / os.path.basename(path))
        shutil.copy(batch_file.path, path)
    elif change == "mode":
        os.chmod(path, 0o640)
    elif change == "owner":
        if os.geteuid() != 0:
            pytest.skip("giving a file to another user needs root")
        os.chown(path, 4321, -1)
    elif change == "symlink":
        target = path
        path = f"{SHM_DIR}/distdqn-batches-{'e' * 32}"
        token = "e" * 32
        os.symlink(target, path)
    elif change == "gone":
        os.unlink(path)
    try:
        with pytest.raises(SharedBatchesUnavailable, match=reason):
            BatchFileMapping(path, token, size, shape, dtype)
    finally:
        if change == "symlink":
            os.unlink(path)


def test_a_tampered_layout_is_refused(batch_file: BatchFile) -> None:
    """Slots claimed beyond the file's end are never written."""
    with open(batch_file.path, "r+b") as f:
        head = f.read(4096)
        _, _, length, _ = HEADER.unpack_from(head, 0)
        layout = msgpack.unpackb(head[LAYOUT_AT : LAYOUT_AT + length])
        layout["slots"] = 1000
        packed = msgpack.packb(layout)
        f.seek(LAYOUT_AT)
        f.write(packed)
        f.seek(12)
        f.write(len(packed).to_bytes(4, "little"))
    with pytest.raises(SharedBatchesUnavailable, match="outside the file"):
        BatchFileMapping(batch_file.path, batch_file.token, 32, OBS, U8)


def test_closing_removes_the_file_and_arrays_in_use_keep_their_memory() -> None:
    file = BatchFile(8, (4,), np.dtype(np.float32), slots=2)
    view = file.views(1)["obs"]
    view[...] = 7.0
    file.close()
    assert not os.path.exists(file.path)
    assert float(view.sum()) == 7.0 * view.size  # still mapped: no crash reading a batch in use


def test_files_of_killed_learners_are_removed_and_live_ones_kept(tmp_path) -> None:
    code = (
        "import os, sys\n"
        "from common.shared_batches import BatchFile\n"
        "f = BatchFile(8, (4,), 'float32', slots=2, directory=sys.argv[1])\n"
        "print(f.path, flush=True)\n"
        "os._exit(0)\n"  # like SIGKILL: no cleanup runs
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=root, capture_output=True, text=True)
    dead = out.stdout.strip()
    assert os.path.exists(dead)
    live = BatchFile(8, (4,), np.dtype(np.float32), slots=2, directory=str(tmp_path))  # cleans up at creation
    try:
        assert not os.path.exists(dead) and os.path.exists(live.path)
        assert shared_batches.remove_stale(str(tmp_path)) == []
    finally:
        live.close()
