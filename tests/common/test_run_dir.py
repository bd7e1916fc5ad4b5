"""A role refuses a run directory another user could plant checkpoints or snapshots in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.errors import StartupError
from common.run_dir import check_run_dir

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_private_or_missing_run_directory_passes(tmp_path: Path) -> None:
    check_run_dir(tmp_path / "not-yet")
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    run.chmod(0o755)
    check_run_dir(run)


@pytest.mark.parametrize("part", ["", "checkpoints", "replay"])
def test_a_directory_others_may_write_is_refused(tmp_path: Path, part: str) -> None:
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "replay").mkdir()
    (run / part).chmod(0o777)
    with pytest.raises(StartupError, match="writable by group or others"):
        check_run_dir(run)


def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to make a directory owned by another user")
    run = tmp_path / "run"
    run.mkdir()
    os.chown(run, 65534, 65534)
    with pytest.raises(StartupError, match="belongs to uid 65534"):
        check_run_dir(run)


def test_the_learner_says_so_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    run.chmod(0o777)
    for role in ("learner", "replay"):
        out = subprocess.run(
            [sys.executable, "-m", role, "--preset", "cartpole", "--run-dir", str(run)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2, out.stderr
        assert out.stderr.strip().startswith("error: run directory") and len(out.stderr.strip().splitlines()) == 1
