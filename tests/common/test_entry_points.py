"""Every entry point answers --help with its options and an example, and a wrong flag with one line.

Operators meet these commands first over ssh, often without the README at hand: --help must be enough
to start one, and a typo must not bury the one useful line under a usage dump or a traceback.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINTS = [
    "actor",
    "learner",
    "replay",
    "common.check_config",
    "common.keys",
    "tools.monitor",
    "tools.plot",
    "tools.evaluate",
]


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_help_lists_options_and_an_example(module: str) -> None:
    result = _run(module, "--help")
    assert result.returncode == 0, result.stderr
    assert "options:" in result.stdout and "examples:" in result.stdout, result.stdout
    example_lines = result.stdout.split("examples:", 1)[1].strip("\n").splitlines()
    assert example_lines and example_lines[0].startswith("  "), result.stdout


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_a_wrong_flag_is_one_error_line_and_exit_code_2(module: str) -> None:
    result = _run(module, "--no-such-flag", "x")
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], result.stderr
