"""The run directory must be ours alone to write: checkpoints and snapshots in it are loaded at resume.

A checkpoint is loaded with `weights_only=True` and a snapshot without pickle, so a planted file cannot run
code, but it could still hand a resumed run another model. So a role refuses to start in a run directory,
or in its checkpoints/, replay/ (replay-K/ of shard K) or logs/ folder, that another user owns or that
others may write to (a sticky, world-writable parent such as /tmp is fine: only the directory itself counts).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from common.errors import StartupError

SUBDIRS = ("checkpoints", "replay", "logs")


def check_run_dir(run_dir: Path) -> None:
    """Raise StartupError unless every existing part of the run directory is ours and private to write."""
    uid = os.geteuid()
    shard_dirs = sorted(run_dir.glob("replay-*")) if run_dir.is_dir() else []  # replay shards' (common/shards.py)
    for path in (run_dir, *(run_dir / name for name in SUBDIRS), *shard_dirs):
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(info.st_mode):
            info = path.stat()  # a link we made is fine; what it points to must pass the same checks
        if not stat.S_ISDIR(info.st_mode):
            raise StartupError(f"run directory {path} is not a directory")
        if info.st_uid != uid:
            raise StartupError(
                f"run directory {path} belongs to uid {info.st_uid}, not to this user ({uid}): "
                "another user could plant the checkpoints a resume loads; choose another --run-dir"
            )
        if info.st_mode & 0o022:
            raise StartupError(
                f"run directory {path} is writable by group or others (mode {stat.S_IMODE(info.st_mode):o}): "
                f"they could plant the checkpoints a resume loads; chmod go-w {path}"
            )
