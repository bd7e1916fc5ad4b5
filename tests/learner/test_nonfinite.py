"""Huge but finite values in a batch make the loss non-finite: the step is skipped, counted and logged, the
weights stay finite, and non-finite weights are neither published nor checkpointed."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from common.config import load_config
from common.envs import EnvSpec
from common.runlog import RunLog, read_metrics
from common.sockets import free_port_base
from learner.checkpoint import LATEST, load_checkpoint, save_checkpoint
from learner.learner import Learner
from learner.progress import ProgressReporter
from learner.replay_client import Batch

SPEC = EnvSpec((4,), np.dtype(np.float32), 2)
SIZE = 32


def _batch(seed: int, *, poison: bool = False) -> Batch:
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((SIZE, 4)).astype(np.float32)
    if poison:
        obs[3] = 3e38  # finite float32, whose products in the first layer overflow to inf
    return Batch(
        obs=torch.from_numpy(obs),
        action=torch.from_numpy(rng.integers(0, 2, SIZE)),
        reward=torch.from_numpy(rng.standard_normal(SIZE).astype(np.float32)),
        discount=torch.full((SIZE,), 0.97),
        next_obs=torch.from_numpy(rng.standard_normal((SIZE, 4)).astype(np.float32)),
        weight=torch.ones(SIZE),
        index=np.arange(SIZE, dtype=np.int64),
        id=np.arange(1000, 1000 + SIZE, dtype=np.int64),
    )


@pytest.fixture
def learner(tmp_path: Path):
    overrides = ["learner.device=cpu", "learner.batch_size=32", "replay.min_size=32", "learner.publish_period=1"]
    config = load_config("cartpole", overrides)
    config = dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))
    made = Learner(config, SPEC, tmp_path / "run")
    sent: list[np.ndarray] = []
    made.replay.send_priorities = lambda index, ids, priority, ready=None, shard=0: sent.append(np.asarray(priority))
    made.sent_priorities = sent
    yield made
    for sock in (made.control.router, made.control.pub):
        sock.close(linger=0)
    made.ctx.destroy(linger=0)


def _parameters(learner: Learner) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in learner.online.state_dict().items()}


def test_a_poisoned_batch_skips_its_step_and_is_counted(learner: Learner, caplog, tmp_path: Path) -> None:
    learner.train_step(_batch(0))
    before = _parameters(learner)
    adam = {k: {n: t.clone() for n, t in s.items()} for k, s in learner.optimizer.state_dict()["state"].items()}
    with caplog.at_level(logging.WARNING):
        loss, _q = learner.train_step(_batch(1, poison=True))
    assert not torch.isfinite(loss), "the batch was meant to overflow the loss"
    after = _parameters(learner)
    assert all(torch.equal(before[k], after[k]) for k in before), "a non-finite step reached the parameters"
    for key, state in learner.optimizer.state_dict()["state"].items():
        assert all(torch.equal(adam[key][n], t) for n, t in state.items()), "Adam's moments took the step"
    assert learner.guard.skipped == 1
    assert "skipped 1 update(s) with a non-finite loss or gradient" in caplog.text and "1003" in caplog.text
    # Its priorities still go back, finite (the wire refuses anything else), the poisoned row at 0.
    priority = learner.sent_priorities[-1]
    assert np.isfinite(priority).all() and priority[3] == 0

    learner.train_step(_batch(2))  # a good batch trains again
    assert any(not torch.equal(after[k], v) for k, v in learner.online.state_dict().items())
    assert all(bool(torch.isfinite(v).all()) for v in learner.online.state_dict().values())

    progress = ProgressReporter(RunLog(tmp_path / "metrics"), learner.exporter, interval_s=1.0)
    progress.trained(loss, _q)
    learner._report_row(progress, progress.start + 1.0)
    progress.runlog.close()
    row = read_metrics(tmp_path / "metrics" / "metrics.jsonl")[-1]
    assert row["updates_skipped_nonfinite"] == 1 and row["weights_refused_nonfinite"] == 0


def test_non_finite_weights_are_neither_published_nor_checkpointed(learner: Learner, caplog) -> None:
    learner.publish()
    learner.checkpoint()
    version = learner.version
    published = learner.control._pending
    good = load_checkpoint(learner.checkpoint_dir)
    assert good is not None
    with torch.no_grad():
        next(learner.online.parameters())[0, 0] = float("nan")
    with caplog.at_level(logging.WARNING):
        learner.publish()
        learner.checkpoint()
    assert learner.version == version and learner.control._pending is published, "NaN weights were published"
    assert learner.guard.publications_refused == 1 and "not published" in caplog.text
    assert "not checkpointing" in caplog.text
    kept = load_checkpoint(learner.checkpoint_dir)
    assert kept is not None and all(torch.equal(kept["online"][k], good["online"][k]) for k in good["online"])


def test_save_checkpoint_refuses_any_non_finite_tensor(tmp_path: Path) -> None:
    assert save_checkpoint(tmp_path, {"online": {"w": torch.ones(3)}, "updates": 1}) == tmp_path / LATEST
    refused = {"online": {"w": torch.ones(3)}, "optimizer": {"state": {0: {"exp_avg": torch.tensor([np.inf])}}}}
    assert save_checkpoint(tmp_path, refused) is None
    assert load_checkpoint(tmp_path)["updates"] == 1


def test_the_device_flag_makes_fused_adam_skip_the_step_and_is_counted_once_per_row(caplog) -> None:
    """CUDA's path, run on the CPU (fused Adam takes found_inf on both): no host read per update."""
    from learner.nonfinite import NonFiniteGuard

    guard = NonFiniteGuard()
    weight = torch.nn.Parameter(torch.ones(4))
    adam = torch.optim.Adam([weight], lr=0.1, fused=True)
    for x in (torch.full((4,), 3e38), torch.ones(4), torch.full((4,), np.nan)):
        loss = (weight * x).sum() ** 2
        adam.zero_grad()
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_([weight], 10.0)
        adam.found_inf = guard.device_flag(loss, norm)
        before = weight.detach().clone()
        adam.step()
        assert torch.equal(before, weight.detach()) != bool(torch.isfinite(loss)), f"input {x[0]}"
    assert int(adam.state[weight]["step"]) == 1 and guard.skipped == 0
    with caplog.at_level(logging.WARNING):
        assert guard.collect() == 2
    assert "skipped 2 update(s)" in caplog.text and guard.collect() == 2
