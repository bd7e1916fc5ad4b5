"""Checkpoints: atomic replacement, a completion marker, loading without pickle, fallback past a damaged file."""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import pytest
import torch

import learner.checkpoint as ckpt
from common.durable import MARKER_MAGIC
from learner.checkpoint import LATEST, PREVIOUS, load_checkpoint, save_checkpoint

CRASHED = 86  # the exit status of a writer that "crashed" on purpose


def _state(step: int) -> dict:
    return {"updates": step, "weights": torch.full((3,), float(step)), "nested": {"lr": 1e-3, "name": "x"}}


def _updates(directory: Path) -> int | None:
    state = load_checkpoint(directory)
    if state is None:
        return None
    # Never garbage: what loads is a whole checkpoint, consistent with itself.
    assert torch.equal(state["weights"], torch.full((3,), float(state["updates"])))
    assert state["nested"] == {"lr": 1e-3, "name": "x"}
    return state["updates"]


def test_round_trip_and_previous_kept(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    state = load_checkpoint(tmp_path)
    assert state is not None and state["updates"] == 2
    assert torch.equal(state["weights"], torch.full((3,), 2.0))
    assert (tmp_path / PREVIOUS).exists()
    assert not list(tmp_path.glob(".*tmp*")), "temporary files must not be left behind"


def test_a_checkpoint_ends_in_its_completion_marker_and_torch_still_reads_it(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(7))
    data = (tmp_path / LATEST).read_bytes()
    assert data[-56:-40] == MARKER_MAGIC
    assert int.from_bytes(data[-40:-32], "little") == len(data) - 56
    # Anyone inspecting a checkpoint by hand can still load the file directly.
    assert torch.load(tmp_path / LATEST, weights_only=True)["updates"] == 7


def test_corrupt_latest_falls_back_to_previous(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    data = (tmp_path / LATEST).read_bytes()
    (tmp_path / LATEST).write_bytes(data[: len(data) // 2])  # a torn write
    state = load_checkpoint(tmp_path)
    assert state is not None and state["updates"] == 1


def _flip(offset: int) -> Callable[[bytes], bytes]:
    def damage(data: bytes) -> bytes:
        out = bytearray(data)
        out[offset] ^= 0x01
        return bytes(out)

    return damage


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        # One bit flipped inside a tensor: same size, a valid-looking zip; only the digest sees it.
        ("tensor_bit", "SHA-256 mismatch"),
        ("marker_digest", "SHA-256 mismatch"),
        ("marker_length", "records"),
        ("no_marker", "no completion marker"),
        ("tail_only", "too short"),
    ],
)
def test_a_damaged_latest_is_detected_by_its_marker_and_the_previous_loads(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str, reason: str
) -> None:
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    path = tmp_path / LATEST
    data = path.read_bytes()
    payload = data[:-56]
    if damage == "tensor_bit":
        # The float 2.0 of the saved weights: flipping its lowest mantissa bit leaves a loadable zip.
        offset = payload.find(torch.full((3,), 2.0).numpy().tobytes())
        assert offset > 0
        changed = _flip(offset)(data)
        assert torch.load(io.BytesIO(changed[:-56]), weights_only=True)["weights"][0] != 2.0
    elif damage == "marker_digest":
        changed = _flip(len(data) - 1)(data)
    elif damage == "marker_length":
        changed = _flip(len(data) - 40)(data)
    elif damage == "no_marker":
        changed = payload  # e.g. a plain torch.save, or a copy that lost its tail
    else:
        changed = data[-50:]  # shorter than a marker
    path.write_bytes(changed)
    with caplog.at_level(logging.WARNING, logger="learner.checkpoint"):
        assert _updates(tmp_path) == 1
    assert reason in caplog.text and str(path) in caplog.text


def test_missing_latest_falls_back_to_previous(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    (tmp_path / LATEST).unlink()
    assert _updates(tmp_path) == 1


def test_both_damaged_gives_none(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    for name in (LATEST, PREVIOUS):
        (tmp_path / name).write_bytes((tmp_path / name).read_bytes()[:-1])
    assert load_checkpoint(tmp_path) is None


def test_missing_directory_gives_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "nothing") is None


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    # Any class outside torch's weights-only allowlist stands in for a malicious payload; the file is
    # complete (its marker checks out), so only weights-only loading stands in the way.
    save_checkpoint(tmp_path, {"obj": Fraction(1, 3)})
    assert load_checkpoint(tmp_path) is None


def test_a_damaged_latest_is_not_rotated_over_a_good_previous(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    (tmp_path / LATEST).write_bytes(b"garbage")
    save_checkpoint(tmp_path, _state(3))
    assert _updates(tmp_path) == 3
    (tmp_path / LATEST).unlink()
    assert _updates(tmp_path) == 1, "previous.pt must still be the last good checkpoint"


def test_crash_before_rename_keeps_old_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_checkpoint(tmp_path, _state(1))

    def boom(*_args: object, **_kwargs: object) -> None:
        raise OSError("simulated crash during rename")

    monkeypatch.setattr("common.durable.os.replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, _state(2))
    monkeypatch.undo()
    state = load_checkpoint(tmp_path)
    assert state is not None and state["updates"] == 1


# ---- a crash at every step of the write --------------------------------------------------------
def _write_dying_at(directory: Path, state: dict, step: int | None, ops: list[str]) -> int:
    """Save `state` in a forked child that dies (os._exit, no cleanup) just before operation `step`.

    The operations are the write of the checkpoint's bytes (the child dies halfway through them), each
    fsync and each rename. `ops` receives their names (only from a run that does not die). Returns the
    child's exit status: CRASHED, or 0 when `step` is past the last operation.
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        status = 1
        try:
            os.close(read)
            done: list[str] = []
            real_fsync, real_replace, real_save = os.fsync, os.replace, torch.save

            def gate(name: str) -> None:
                if len(done) == step:
                    os._exit(CRASHED)
                done.append(name)

            def fsync(fd: int) -> None:
                gate(f"fsync {Path(os.readlink(f'/proc/self/fd/{fd}')).name}")
                real_fsync(fd)

            def replace(src: str | Path, dst: str | Path) -> None:
                gate(f"rename {Path(src).name} -> {Path(dst).name}")
                real_replace(src, dst)

            def save(obj: object, f: io.BufferedIOBase) -> None:
                buffer = io.BytesIO()
                real_save(obj, buffer)
                data = buffer.getvalue()
                f.write(data[: len(data) // 2])
                f.flush()
                gate("write")
                f.write(data[len(data) // 2 :])

            os.fsync, os.replace, ckpt.torch.save = fsync, replace, save  # type: ignore[assignment]
            save_checkpoint(directory, state)
            os.write(write, "\n".join(done).encode())
            status = 0
        finally:
            os._exit(status)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        ops.extend(pipe.read().decode().splitlines())
    _, wait_status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(wait_status)


def _two_checkpoints(directory: Path) -> None:
    save_checkpoint(directory, _state(1))
    save_checkpoint(directory, _state(2))


def test_a_crash_at_any_step_of_a_write_leaves_a_complete_checkpoint(tmp_path: Path) -> None:
    ops: list[str] = []
    _two_checkpoints(tmp_path / "full")
    assert _write_dying_at(tmp_path / "full", _state(3), None, ops) == 0
    tmp_name = ops[1].removeprefix("fsync ")
    assert tmp_name.startswith(f".{LATEST}.tmp-")
    assert ops == [
        "write",
        f"fsync {tmp_name}",
        f"rename {LATEST} -> {PREVIOUS}",
        f"rename {tmp_name} -> {LATEST}",
        "fsync full",
    ]
    visible = ops.index(f"rename {tmp_name} -> {LATEST}") + 1  # from here on, the new checkpoint is latest.pt
    for step in range(len(ops) + 1):
        directory = tmp_path / f"crash-before-{step}"
        _two_checkpoints(directory)
        assert _write_dying_at(directory, _state(3), step, []) == (CRASHED if step < len(ops) else 0)
        expected = 3 if step >= visible else 2
        if step < visible:  # a real crash: the dead writer's temp file is still there, and ignored
            assert list(directory.glob(f".{LATEST}.tmp-*"))
        if step == visible - 1:  # the window between the two renames
            assert not (directory / LATEST).exists()
        assert _updates(directory) == expected, f"crash before {ops[step] if step < len(ops) else 'the end'}"
        # The next write after the crash works and cleans up after the dead one.
        save_checkpoint(directory, _state(4))
        assert _updates(directory) == 4
        assert not list(directory.glob(".*tmp*"))
        (directory / LATEST).unlink()
        assert _updates(directory) == expected, "the checkpoint before the new one is kept as previous"


def test_a_crash_between_the_renames_of_the_very_first_rotation(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(1))
    # Before: latest.pt only. Dying after the first rename leaves previous.pt alone, and it loads.
    assert _write_dying_at(tmp_path, _state(2), 3, []) == CRASHED
    assert not (tmp_path / LATEST).exists()
    assert _updates(tmp_path) == 1
