"""Checkpoints: atomic replacement, loading without pickle, fallback past a damaged file."""

from fractions import Fraction
from pathlib import Path

import pytest
import torch

from learner.checkpoint import LATEST, PREVIOUS, load_checkpoint, save_checkpoint


def _state(step: int) -> dict:
    return {"updates": step, "weights": torch.full((3,), float(step)), "nested": {"lr": 1e-3, "name": "x"}}


def test_round_trip_and_previous_kept(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    state = load_checkpoint(tmp_path)
    assert state is not None and state["updates"] == 2
    assert torch.equal(state["weights"], torch.full((3,), 2.0))
    assert (tmp_path / PREVIOUS).exists()
    assert not list(tmp_path.glob(".*tmp*")), "temporary files must not be left behind"


def test_corrupt_latest_falls_back_to_previous(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _state(1))
    save_checkpoint(tmp_path, _state(2))
    data = (tmp_path / LATEST).read_bytes()
    (tmp_path / LATEST).write_bytes(data[: len(data) // 2])  # a torn write
    state = load_checkpoint(tmp_path)
    assert state is not None and state["updates"] == 1


def test_missing_directory_gives_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "nothing") is None


def test_pickled_objects_are_refused(tmp_path: Path) -> None:
    # Any class outside torch's weights-only allowlist stands in for a malicious payload.
    torch.save({"obj": Fraction(1, 3)}, tmp_path / LATEST)
    # weights_only loading refuses arbitrary classes, and there is nothing older to fall back to.
    assert load_checkpoint(tmp_path) is None


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
