"""The tools on run directories and checkpoints made here, without a cluster: what a real run rarely shows
(silent or restarted actors, lost transitions, half-written lines) and an Atari checkpoint's video."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from common.config import load_config
from common.envs import env_spec
from common.networks import QNetwork
from learner.checkpoint import save_checkpoint
from tools.monitor import sparkline, warnings
from tools.run_files import JsonLines, RunReader


def test_json_lines_waits_for_a_line_to_end(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    reader = JsonLines(path)
    assert reader.read_new() == []  # no file yet
    path.write_text('{"a": 1}\n{"b"')
    assert reader.read_new() == [{"a": 1}]
    with path.open("a") as f:
        f.write(': 2}\nnot json\n[1]\n{"c": 3}\n')
    assert reader.read_new() == [{"b": 2}, {"c": 3}]


def test_sparkline_spans_the_axis() -> None:
    line = sparkline([0, 50, 100], [0.0, 5.0, 10.0], 10, 100)
    assert len(line) == 10 and line[0] == "▁" and line[-1] == "█"
    assert sparkline([50, 100], [1.0, 1.0], 4, 100).startswith("  ")  # nothing before the first point


def _write_run(run_dir: Path, *, finished: bool) -> None:
    (run_dir / "logs").mkdir(parents=True)
    (run_dir / "config.toml").write_text('name = "cartpole"\nlog_interval_s = 1.0\n[env]\nid = "CartPole-v1"\n')
    row = {"wall_time": 3.0, "env_steps": 5000, "learner_updates": 100, "replay_lost": 64, "replay_rejected": 2}
    (run_dir / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    actors = [
        {"index": 0, "host": "a", "last_heard_s": 0.5, "restarts": 0},
        {"index": 1, "host": "b", "last_heard_s": 9.0, "restarts": 2},
    ]
    (run_dir / "actors.json").write_text(json.dumps({"written_at": time.time(), "actors": actors}))
    learner_log = "[learner] 2026-12-02 10:00:00,000 INFO learner.learner: learning on cpu: control ...\n"
    (run_dir / "logs" / "learner.log").write_text(learner_log * 2)
    (run_dir / "logs" / "replay.log").write_text(
        "[replay] 2026-12-02 10:00:00,000 WARNING replay.server: rejected a message (bad_shape): from actor 1\n"
    )
    if finished:
        (run_dir / "summary.json").write_text(json.dumps({"solved": False, "reason": "time budget"}))


def test_warnings_name_what_an_operator_should_look_at(tmp_path: Path) -> None:
    _write_run(tmp_path / "run", finished=False)
    found = "\n".join(warnings(RunReader(tmp_path / "run").refresh()))
    assert "actor 1 silent for 9 s" in found and "actor 0 silent" not in found
    assert "actor 1 restarted 2 time(s)" in found
    assert "64 transitions lost" in found and "2 messages rejected by replay" in found
    assert "learner started 2 times" in found
    assert "replay: 1 warning(s)/error(s), last: replay.server: rejected a message (bad_shape)" in found


def test_a_finished_run_has_no_silent_actors(tmp_path: Path) -> None:
    _write_run(tmp_path / "run", finished=True)
    found = "\n".join(warnings(RunReader(tmp_path / "run").refresh()))
    assert "silent" not in found and "restarted 2 time(s)" in found


def _checkpoint(directory: Path, preset: str, *overrides: str) -> None:
    config = load_config(preset, overrides)
    spec = env_spec(config.env)
    net = QNetwork(spec.obs_shape, spec.num_actions, config.network)
    state = {"online": net.state_dict(), "updates": 7, "version": 3, "env_steps": 100}
    save_checkpoint(directory, {**state, "config": json.dumps(config.to_dict())})


def _evaluate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools.evaluate", *args], capture_output=True, text=True, timeout=180)


@pytest.mark.slow
def test_evaluate_records_an_atari_game(tmp_path: Path) -> None:
    _checkpoint(tmp_path / "checkpoints", "pong", "env.num_envs=1")
    videos = tmp_path / "videos"
    result = _evaluate(str(tmp_path), "--episodes", "1", "--max-episode-steps", "40", "--video", str(videos))
    assert result.returncode == 0, result.stderr
    assert "ALE/Pong-v5: weights v3 after 7 updates" in result.stdout
    (video,) = videos.glob("*.mp4")
    assert video.name.startswith("ALE_Pong-v5") and video.read_bytes()[4:8] == b"ftyp"


def test_evaluate_refuses_what_is_not_a_checkpoint(tmp_path: Path) -> None:
    bogus = tmp_path / "latest.pt"
    torch.save({"online": {}}, bogus)  # a torch file without the completion marker
    result = _evaluate(str(bogus))
    assert result.returncode == 2 and result.stderr.startswith("error: checkpoint") and result.stderr.count("\n") == 1
    result = _evaluate(str(tmp_path / "missing"))
    assert result.returncode == 2 and "no such file" in result.stderr
