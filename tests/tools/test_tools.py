"""The operator's commands against one real short run: a CartPole cluster started by the launcher.

The run happens once for the module. While it trains, both Prometheus endpoints are scraped; once it
is over, the monitor is drawn in a real pseudo-terminal, the curves are plotted, and a network from
its checkpoint plays a recorded episode.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.runlog import read_metrics
from common.sockets import free_port_base

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
LAUNCHER = REPO_ROOT / "scripts" / "launch_cluster.sh"
SETUP_ENV = REPO_ROOT / "scripts" / "setup_env.sh"
ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[()][0-9A-Za-z]|\x1b[=>78]")
RUN_BUDGET_S = 12


def _scrape(port: int) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def _scrape_when_trained(port: int, deadline: float) -> tuple[dict[str, list], dict[str, list]]:
    """Both endpoints, once the learner has counted env steps and updates (the run is then well under way)."""
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            learner = _scrape(port)
            steps = learner.get("distdqn_env_steps", [])
            updates = learner.get("distdqn_learner_updates", [])
            if steps and steps[0].value > 0 and updates and updates[0].value > 0:
                return learner, _scrape(port + 1)
        time.sleep(0.5)
    raise AssertionError("the learner's metrics endpoint never showed training")


class Terminal:
    """A child process on a pseudo-terminal of 140 x 45 cells, its output drained by a thread (so it never
    blocks on a full terminal) and kept with the escape sequences removed."""

    def __init__(self, argv: list[str]) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child, leader of its own session and process group
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 45, 140, 0, 0))
            os.environ.update(TERM="xterm-256color")
            os.chdir(REPO_ROOT)
            os.execv(argv[0], argv)
        self._raw = bytearray()
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.status: int | None = None

    def _drain(self) -> None:
        while True:
            try:
                data = os.read(self.fd, 65536)
            except OSError:
                return
            if not data:
                return
            self._raw += data

    @property
    def screen(self) -> str:
        return ANSI.sub("", bytes(self._raw).decode("utf-8", "replace"))

    def wait_for(self, patterns: list[str], timeout_s: float) -> list[str]:
        """The patterns not (yet) on screen when all are there or the time is up."""
        deadline = time.monotonic() + timeout_s
        while True:
            missing = [p for p in patterns if not re.search(p, self.screen)]
            if not missing or time.monotonic() > deadline:
                return missing
            time.sleep(0.2)

    def wait_exit(self, timeout_s: float) -> int | None:
        deadline = time.monotonic() + timeout_s
        while self.status is None and time.monotonic() < deadline:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            if done:
                self.status = os.waitstatus_to_exitcode(status)
            else:
                time.sleep(0.2)
        return self.status

    def close(self) -> None:
        if self.status is None:
            for sig, grace in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.pid, sig)
                if self.wait_exit(grace) is not None:
                    break
        os.close(self.fd)
        self._reader.join(timeout=5)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The launcher with --monitor in a terminal: the dashboard shows while it trains, the summary after."""
    # The launcher's set-up step first, so a reinstall (pyproject.toml changed) is not timed as the run.
    setup = subprocess.run([str(SETUP_ENV)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert setup.returncode == 0, setup.stderr[-2000:]
    tmp = tmp_path_factory.mktemp("tools")
    run_dir, base = tmp / "run", free_port_base(6)
    metrics_port = base + 4
    args = [str(LAUNCHER), "--monitor", "--run-dir", str(run_dir), "--port-base", str(base), "--seed", "0"]
    args += ["log_interval_s=1", f"stop.max_wall_s={RUN_BUDGET_S}", f"net.metrics_port={metrics_port}"]
    terminal = Terminal(args)
    try:
        scraped = _scrape_when_trained(metrics_port, time.monotonic() + 90)
        code = terminal.wait_exit(RUN_BUDGET_S + 90)
        assert code in (0, 1), f"launcher exit status {code}\n{terminal.screen[-3000:]}"
        yield {"run_dir": run_dir, "scraped": scraped, "output": terminal.screen, "tmp": tmp}
    finally:
        terminal.close()


def test_prometheus_endpoints_parse(run: dict) -> None:
    learner, replay = run["scraped"]
    assert learner["distdqn_env_steps"][0].name == "distdqn_env_steps_total"
    assert learner["distdqn_learner_updates"][0].value > 0
    assert learner["distdqn_learner_weight_version"][0].value >= 1
    assert replay["distdqn_replay_size"][0].value > 0
    assert replay["distdqn_replay_inserted"][0].value >= replay["distdqn_replay_size"][0].value
    assert replay["distdqn_replay_capacity"][0].value == 100_000


def test_launcher_shows_the_monitor_then_the_summary(run: dict) -> None:
    screen, run_dir = run["output"], run["run_dir"]
    last_frame = screen.rfind("q quits")
    assert last_frame > 0 and "learner and replay" in screen, screen[-3000:]
    assert re.search(r"SOLVED: .* after [\d.]+ s, \d+ env steps", screen[last_frame:]), screen[-3000:]
    assert "train t=" not in screen  # the progress lines went to their file instead
    assert "train t=" in (run_dir / "logs" / "progress.log").read_text()


def test_finished_run_leaves_curves_and_points_to_the_commands(run: dict) -> None:
    run_dir = run["run_dir"]
    assert (run_dir / "curves.png").stat().st_size > 10_000
    assert f"distdqn-plot {run_dir}" in run["output"]
    actors = json.loads((run_dir / "actors.json").read_text())
    assert [a["index"] for a in actors["actors"]] == [0, 1] and actors["actors"][0]["host"]


def test_monitor_draws_the_run_in_a_terminal(run: dict) -> None:
    run_dir = run["run_dir"]
    rows = read_metrics(run_dir / "metrics.jsonl")
    last = [r for r in rows if "updates_per_s" in r][-1]
    best = max(r["eval_return_mean"] for r in rows if "eval_return_mean" in r)
    want = [  # the figures panel's lines, the best evaluation, the status and the actors table's title
        rf"env steps\s+{last['env_steps']:,}\s",
        rf"updates\s+{last['learner_updates']:,}\s",
        rf"eval \S+\.\.{best:.1f} \(\d+ evaluations\)",
        r"finished: (NOT )?SOLVED",
        r"actors \(2\)",
    ]
    terminal = Terminal([sys.executable, "-m", "tools.monitor", str(run_dir), "--interval", "0.5"])
    try:
        missing = terminal.wait_for(want, timeout_s=30)
        assert not missing, f"not on screen: {missing}\n{terminal.screen[-4000:]}"
        os.write(terminal.fd, b"q")
        assert terminal.wait_exit(15) == 0, f"the monitor did not quit on q\n{terminal.screen[-2000:]}"
    finally:
        terminal.close()


def test_plot_png_shows_the_run(run: dict) -> None:
    import matplotlib.image

    from tools.plot import load_curve, make_figure

    run_dir, out = run["run_dir"], run["tmp"] / "curves.png"
    result = subprocess.run(
        [sys.executable, "-m", "tools.plot", str(run_dir), "-o", str(out)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    image = matplotlib.image.imread(out)
    assert image.shape[:2] == (450, 1200)  # 12 x 4.5 inches at 100 dpi
    assert image[..., :3].std() > 0.05 and len(np.unique(image[..., :3].reshape(-1, 3), axis=0)) > 50

    curve = load_curve(run_dir, "eval_return_mean")
    steps_ax, wall_ax = make_figure([curve], "eval_return_mean").axes
    values = curve.columns["value"]
    assert steps_ax.get_xlim()[0] == 0 and steps_ax.get_xlim()[1] >= curve.columns["env_steps"].max()
    assert wall_ax.get_xlim()[1] >= curve.columns["wall_time"].max()
    low, high = steps_ax.get_ylim()
    assert low <= values.min() and high >= max(values.max(), 475)  # the stop threshold is drawn too


def test_plot_metric_column_and_several_runs_as_a_band(run: dict) -> None:
    from tools.plot import load_curve, make_figure

    curve = load_curve(run["run_dir"], "updates_per_s")
    assert curve.threshold is None and len(curve.columns["value"]) >= 3
    fig = make_figure([curve, curve], "updates_per_s")
    assert any("mean of 2 runs" in text.get_text() for text in fig.axes[0].get_legend().get_texts())


def test_evaluate_records_a_cartpole_episode(run: dict) -> None:
    video_dir = run["tmp"] / "videos"
    result = subprocess.run(
        [sys.executable, "-m", "tools.evaluate", str(run["run_dir"]), "--episodes", "1", "--seed", "3",
         "--video", str(video_dir), "--max-episode-steps", "60"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert re.search(r"│\s+0 │\s+\d+\.\d │\s+\d+ │", result.stdout), result.stdout
    videos = list(video_dir.glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
    assert videos[0].read_bytes()[4:8] == b"ftyp"  # an MP4 container


@pytest.mark.parametrize("module", ["tools.monitor", "tools.plot", "tools.evaluate"])
def test_help_and_a_wrong_option(module: str) -> None:
    shown = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and "examples:" in shown.stdout and "distdqn-" in shown.stdout
    wrong = subprocess.run([sys.executable, "-m", module, "--no-such-flag"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2
    assert wrong.stderr.count("\n") == 1 and wrong.stderr.startswith("error: ")
