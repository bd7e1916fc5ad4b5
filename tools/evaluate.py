"""`distdqn-evaluate CHECKPOINT_OR_RUN_DIR --episodes N [--video DIR] [--seed S]`: play a saved network.

Greedy episodes (or epsilon-greedy with --epsilon) of the checkpoint's online network, one env at a time,
with the run's own config (saved inside the checkpoint) and the evaluator's environment: whole Atari
games, real scores. Checkpoints load through `learner.checkpoint` (torch.load(weights_only=True), so a
checkpoint from elsewhere cannot run code). `--video DIR` records every episode with gymnasium's
RecordVideo (the `video` extra: moviepy, and pygame for classic control).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from common.config import RunConfig
from common.errors import StartupError
from common.process import run_cli
from tools.cli import Parser

EXAMPLES = """\
  distdqn-evaluate runs/cartpole-s0-20261201-101500 --episodes 10
  distdqn-evaluate runs/pong-s0-20261201-101500/checkpoints/previous.pt --episodes 3 --video videos/ --seed 7"""


def load_network(path: Path) -> tuple[Any, RunConfig, dict[str, Any]]:
    """(online Q-network in eval mode, the run's config, the checkpoint's counters) from a file or run dir."""
    import torch

    from common.durable import DamagedFile, read_complete
    from learner.checkpoint import load_checkpoint

    if path.is_dir():
        directory = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        state = load_checkpoint(directory)
        if state is None:
            raise StartupError(f"no readable checkpoint in {directory}")
    else:
        try:
            payload = read_complete(path)
        except (DamagedFile, OSError) as err:
            raise StartupError(f"checkpoint {path}: {err}") from None
        try:
            state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
        except Exception as err:  # complete, yet not a checkpoint torch reads without pickle
            raise StartupError(f"checkpoint {path} is unreadable: {err}") from None
    try:
        config = RunConfig.from_dict(json.loads(state["config"]))
    except (KeyError, TypeError, json.JSONDecodeError) as err:
        raise StartupError(f"checkpoint {path} holds no run config ({err})") from None
    from common.envs import env_spec
    from common.networks import QNetwork

    spec = env_spec(config.env)
    net = QNetwork(spec.obs_shape, spec.num_actions, config.network)
    try:
        net.load_state_dict(state["online"])
    except (KeyError, RuntimeError) as err:
        raise StartupError(f"checkpoint {path}: its network does not match its config: {err}") from None
    counters = {k: state.get(k) for k in ("updates", "version", "env_steps")}
    return net.eval(), config, counters


def make_env(config: RunConfig, video_dir: Path | None) -> Any:
    from common.envs import make_env as make_run_env

    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")  # pygame renders off-screen; no sound device to look for
    env = make_run_env(config.env, training=False, render_mode="rgb_array" if video_dir else None)
    if video_dir is None:
        return env
    try:
        import moviepy  # noqa: F401
    except ImportError:
        raise StartupError("--video needs the video extra: pip install -e '.[video]'") from None
    from gymnasium.wrappers import RecordVideo

    fps = env.metadata.get("render_fps") or 30
    if config.env.atari:
        from common.atari import FRAME_SKIP

        fps = max(1, round(fps / FRAME_SKIP))  # one rendered frame per agent step of FRAME_SKIP frames
    return RecordVideo(
        env, str(video_dir), episode_trigger=lambda _: True, name_prefix=config.env.id.replace("/", "_"), fps=fps
    )


def play(net: Any, env: Any, episodes: int, seed: int, epsilon: float) -> list[tuple[float, int]]:
    import torch

    rng = np.random.default_rng(seed)
    results = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        total, length, done = 0.0, 0, False
        while not done:
            if rng.random() < epsilon:
                action = int(env.action_space.sample())
            else:
                with torch.no_grad():
                    action = int(net(torch.as_tensor(np.asarray(obs)[None])).argmax(dim=1))
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            length += 1
            done = terminated or truncated
        results.append((total, length))
    return results


def report(results: list[tuple[float, int]], config: RunConfig, counters: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    returns = np.array([r for r, _ in results])
    console = Console()
    console.print(
        f"{config.env.id}: weights v{counters.get('version')} after {counters.get('updates')} updates "
        f"and {counters.get('env_steps')} env steps"
    )
    table = Table()
    table.add_column("episode", justify="right")
    table.add_column("return", justify="right")
    table.add_column("length", justify="right")
    for i, (ret, length) in enumerate(results):
        table.add_row(str(i), f"{ret:.1f}", str(length))
    table.add_section()
    table.add_row("mean", f"{returns.mean():.1f} ± {returns.std():.1f}", "")
    console.print(table)


def _main(argv: list[str] | None) -> int:
    parser = Parser("distdqn-evaluate", "Greedy episodes of a saved distdqn network, optionally recorded.", EXAMPLES)
    parser.add_argument("path", type=Path, metavar="CHECKPOINT_OR_RUN_DIR", help="a .pt file or a run directory")
    parser.add_argument("--episodes", type=int, default=10, help="episodes to play (default 10)")
    parser.add_argument("--video", type=Path, default=None, metavar="DIR", help="record each episode as an MP4 here")
    parser.add_argument("--seed", type=int, default=0, help="episode i resets with seed S + i (default 0)")
    parser.add_argument("--epsilon", type=float, default=0.0, help="random-action probability (default 0: greedy)")
    parser.add_argument(
        "--max-episode-steps", type=int, default=0, metavar="N", help="cut episodes at N steps (default: the run's)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.episodes <= 100_000:
        parser.error(f"--episodes must be in [1, 100000], got {args.episodes}")
    if not 0.0 <= args.epsilon <= 1.0:
        parser.error(f"--epsilon must be in [0, 1], got {args.epsilon}")
    if not 0 <= args.seed < 2**31:
        parser.error(f"--seed must be in [0, 2**31), got {args.seed}")
    if not args.path.exists():
        raise StartupError(f"{args.path}: no such file or directory")
    if args.max_episode_steps < 0:
        parser.error(f"--max-episode-steps must be >= 0, got {args.max_episode_steps}")
    net, config, counters = load_network(args.path)
    if args.max_episode_steps:
        config = dataclasses.replace(
            config, env=dataclasses.replace(config.env, max_episode_steps=args.max_episode_steps)
        )
    env = make_env(config, args.video)
    try:
        results = play(net, env, args.episodes, args.seed, args.epsilon)
    finally:
        env.close()  # RecordVideo writes the last episode's file here
    report(results, config, counters)
    if args.video is not None:
        videos = sorted(args.video.glob("*.mp4"))
        print(f"{len(videos)} video(s) in {args.video}")
    return 0


def main(argv: list[str] | None = None) -> None:
    sys.exit(run_cli(lambda: _main(argv)))


if __name__ == "__main__":
    main()
