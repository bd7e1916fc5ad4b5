"""Resume is exact: stopped at update k and resumed, the learner equals an uninterrupted run at n."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import load_config
from common.envs import EnvSpec
from common.sockets import free_port_base
from learner.learner import Learner
from learner.replay_client import Batch

SPEC = EnvSpec((4,), np.dtype(np.float32), 2)
K, N = 30, 70


def _batches(count: int, size: int = 32) -> list[Batch]:
    rng = np.random.default_rng(123)
    out = []
    for _ in range(count):
        out.append(
            Batch(
                obs=torch.from_numpy(rng.standard_normal((size, 4)).astype(np.float32)),
                action=torch.from_numpy(rng.integers(0, 2, size)),
                reward=torch.from_numpy(rng.standard_normal(size).astype(np.float32)),
                discount=torch.from_numpy((rng.random(size) > 0.1).astype(np.float32) * 0.97),
                next_obs=torch.from_numpy(rng.standard_normal((size, 4)).astype(np.float32)),
                weight=torch.from_numpy(rng.random(size).astype(np.float32)),
                index=np.arange(size, dtype=np.int64),
                id=np.arange(size, dtype=np.int64),
            )
        )
    return out


def _learner(run_dir: Path, *overrides: str) -> Learner:
    config = load_config(
        "cartpole",
        [
            "learner.device=cpu",
            "learner.batch_size=32",
            "replay.min_size=32",
            "learner.target_update_period=7",
            "learner.publish_period=5",
            "learner.lr_final=0.0001",
            "stop.max_updates=100",
            *overrides,
        ],
    )
    config = dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))
    return Learner(config, SPEC, run_dir)


def _close(learner: Learner) -> None:
    for sock in (learner.control.router, learner.control.pub):
        sock.close(linger=0)
    learner.ctx.destroy(linger=0)


def _assert_same(a: Learner, b: Learner) -> None:
    assert a.updates == b.updates and a.version == b.version
    for name in ("online", "target"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), f"{name}.{key} differs"
    oa, ob = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert oa["param_groups"] == ob["param_groups"]
    for pid, state in oa["state"].items():
        for key, value in state.items():
            assert torch.equal(value, ob["state"][pid][key]), f"optimizer state {pid}.{key} differs"


def test_resume_is_bit_exact(tmp_path: Path) -> None:
    batches = _batches(N)
    straight = _learner(tmp_path / "straight")
    for batch in batches:
        straight.train_step(batch)

    first = _learner(tmp_path / "resumed")
    for batch in batches[:K]:
        first.train_step(batch)
    first.checkpoint()
    _close(first)

    second = _learner(tmp_path / "resumed")
    assert second.resume()
    assert second.updates == K
    for batch in batches[K:]:
        second.train_step(batch)
    _assert_same(straight, second)
    _close(straight)
    _close(second)


def test_resume_without_checkpoint_starts_fresh(tmp_path: Path) -> None:
    learner = _learner(tmp_path / "fresh")
    try:
        assert not learner.resume()
        assert learner.updates == 0
    finally:
        _close(learner)


def test_resume_detects_a_diverged_run(tmp_path: Path) -> None:
    """The comparison itself can fail: a resumed run fed different batches is not equal."""
    batches = _batches(N)
    straight = _learner(tmp_path / "a")
    for batch in batches:
        straight.train_step(batch)
    other = _learner(tmp_path / "b")
    for batch in reversed(batches):
        other.train_step(batch)
    with pytest.raises(AssertionError):
        _assert_same(straight, other)
    _close(straight)
    _close(other)


def test_cuda_only_options_are_off_on_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """bf16 autocast and torch.compile only pay on a GPU: on a CPU they are off, said once, and the
    updates are exactly those of a learner that never asked for them."""
    batches = _batches(10)
    asked = _learner(tmp_path / "asked", "learner.bf16=true", "learner.compile=true")
    plain = _learner(tmp_path / "plain")
    try:
        assert not asked.bf16 and asked.online_forward is asked.online and asked.target_forward is asked.target
        assert "learner.bf16 is for CUDA devices; off on cpu" in caplog.text
        assert "learner.compile is for CUDA devices; off on cpu" in caplog.text
        for batch in batches:
            asked.train_step(batch)
            plain.train_step(batch)
        _assert_same(asked, plain)
    finally:
        _close(asked)
        _close(plain)
