"""The learner: Double/Dueling n-step DQN updates from replay, weights out to the actors, the run log.

The update loop only trains: batches arrive prefetched (ReplayClient: by a thread on CUDA, inline on
CPU), priorities go back the same way, and weights are handed to the control server, which publishes
them. Everything the learner must save
to resume is in `state_dict`, and that is exactly what a checkpoint holds.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import zmq

from common.config import RunConfig, save_config
from common.envs import EnvSpec
from common.metrics_export import start_exporter
from common.networks import QNetwork, parameter_views, weights_to_numpy
from common.runlog import RunLog
from common.security import ClientSecurity
from learner.actors_report import ActorsReport
from learner.checkpoint import load_checkpoint, save_checkpoint
from learner.control import ControlServer
from learner.losses import nstep_targets, td_loss
from learner.nonfinite import NonFiniteGuard, finite_arrays
from learner.progress import ProgressReporter
from learner.replay_client import Batch, ReplayClient
from learner.stop_rules import StopRules

log = logging.getLogger(__name__)

WAIT_WARNING_S = 10.0
STOP_BROADCAST_S = 1.0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        from common.errors import ConfigError

        raise ConfigError(f"learner.device: {name} asked for, but torch sees no CUDA device")
    return torch.device(name)


@dataclass
class Outcome:
    solved: bool
    reason: str
    wall_s: float
    env_steps: int
    updates: int


class Learner:
    def __init__(self, config: RunConfig, spec: EnvSpec, run_dir: Path, *, replay_host: str = "127.0.0.1") -> None:
        self.config = config
        self.run_dir = run_dir
        lc = config.learner
        self.device = pick_device(lc.device)
        torch.set_num_threads(lc.torch_threads)
        torch.manual_seed(config.seed)
        self.online = QNetwork(spec.obs_shape, spec.num_actions, config.network).to(self.device)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        # fused Adam: one kernel for all parameters, several times faster than the per-tensor loop on small nets.
        self.optimizer = torch.optim.Adam(self.online.parameters(), lr=lc.lr, eps=lc.adam_eps, fused=True)
        self.bf16, self.online_forward, self.target_forward = self._accelerate(lc)
        self.updates = 0
        self.version = 0
        self.env_steps_offset = 0  # env steps counted before a resume
        self.guard = NonFiniteGuard()
        self._wait_since: float | None = None  # since when the loop has had no batch, for the starvation warning
        self._next_health_check = self._last_checkpoint = time.monotonic()
        self.checkpoint_dir = run_dir / "checkpoints"
        self.actors_report = ActorsReport(run_dir / "actors.json")
        self.exporter = start_exporter(config.net, "learner")  # a no-op unless net.metrics_port is set
        # Keys load here, before any thread starts, so a bad key file is a plain startup error.
        curve = ClientSecurity.from_config(config.net)
        self.ctx = zmq.Context(io_threads=config.net.io_threads)
        self.control = ControlServer(config, self.ctx)
        self.replay = ReplayClient(
            config, replay_host, pin_memory=self.device.type == "cuda", ctx=self.ctx, curve=curve, spec=spec
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.toml")

    def _accelerate(self, lc) -> tuple[bool, torch.nn.Module, torch.nn.Module]:
        """bf16 autocast and torch.compile, on CUDA only: on a CPU they cost more than they save.

        The compiled wrappers share parameters with the plain modules, which stay what checkpoints,
        target copies and weight publications use (a compiled module's state_dict renames its keys).
        """
        cuda = self.device.type == "cuda"
        for name in ("bf16", "compile"):
            if getattr(lc, name) and not cuda:
                log.warning("learner.%s is for CUDA devices; off on %s", name, self.device)
        if not (cuda and lc.compile):
            return cuda and lc.bf16, self.online, self.target
        return lc.bf16, torch.compile(self.online), torch.compile(self.target)

    # ---- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "online": self.online.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "updates": self.updates,
            "version": self.version,
            "env_steps": self.env_steps,
            "torch_rng": torch.get_rng_state(),
            "config": json.dumps(self.config.to_dict()),
        }

    def load_state_dict(self, state: dict) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.updates = int(state["updates"])
        self.version = int(state["version"])
        self.env_steps_offset = int(state["env_steps"])
        torch.set_rng_state(state["torch_rng"])

    def resume(self) -> bool:
        state = load_checkpoint(self.checkpoint_dir)
        if state is None:
            log.warning("--resume: no checkpoint in %s; starting fresh", self.checkpoint_dir)
            return False
        self.load_state_dict(state)
        log.info("resumed at update %d, weight version %d, %d env steps", self.updates, self.version, self.env_steps)
        return True

    def checkpoint(self) -> None:
        path = save_checkpoint(self.checkpoint_dir, self.state_dict())
        if path is not None:
            log.info("checkpoint written: %s (update %d)", path, self.updates)

    @property
    def env_steps(self) -> int:
        return self.env_steps_offset + self.control.env_steps

    # ---- training ------------------------------------------------------------------------------
    def _schedules(self) -> None:
        rc, lc = self.config.replay, self.config.learner
        self.replay.beta = rc.beta_start + (1.0 - rc.beta_start) * min(1.0, self.updates / rc.beta_updates)
        if lc.lr_final >= 0:
            fraction = min(1.0, self.updates / self.config.stop.max_updates)
            for group in self.optimizer.param_groups:
                group["lr"] = lc.lr + (lc.lr_final - lc.lr) * fraction

    def update(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One gradient step; returns (loss, mean Q of the taken actions) as scalar tensors on the device.

        Nothing here waits for the device: on CUDA the priorities are copied to pinned host memory
        asynchronously and handed over with an event that says when they have landed, and the loss is
        read back only when a log row is written. The CPU can then queue the next step's work while
        the GPU runs this one. A non-finite loss or gradient skips the step (learner/nonfinite.py), and
        the rows whose TD error is not finite get priority 0 (as little as replay gives any)."""
        dev, nb = self.device, self.device.type == "cuda"
        obs = batch.obs.to(dev, non_blocking=nb)
        next_obs = batch.next_obs.to(dev, non_blocking=nb)
        action = batch.action.to(dev, non_blocking=nb)
        reward = batch.reward.to(dev, non_blocking=nb)
        discount = batch.discount.to(dev, non_blocking=nb)
        weight = batch.weight.to(dev, non_blocking=nb)
        lc = self.config.learner
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            q_values = self.online_forward(obs).float()
            with torch.no_grad():
                next_target = self.target_forward(next_obs).float()
                next_online = self.online_forward(next_obs).float() if lc.double else next_target
        with torch.no_grad():
            targets = nstep_targets(reward, discount, next_online, next_target, double=lc.double)
        loss, td_abs = td_loss(q_values, action, targets, weight)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.online.parameters(), lc.max_grad_norm)
        if nb:  # (td_abs is detached and float32, autocast or not)
            self.optimizer.found_inf = self.guard.device_flag(loss, grad_norm)  # skipped on the device
            self.optimizer.step()
            td_abs = torch.nan_to_num(td_abs, nan=0.0, posinf=0.0, neginf=0.0)
            host = td_abs.to("cpu", non_blocking=True)  # pinned; filled when the stream gets there
            landed = torch.cuda.Event()
            landed.record()
            self.replay.send_priorities(batch.index, batch.id, host, ready=landed, shard=batch.shard)
        else:
            if self.guard.host_check(loss, grad_norm, batch.id, td_abs):
                self.optimizer.step()
            else:
                td_abs = torch.nan_to_num(td_abs, nan=0.0, posinf=0.0, neginf=0.0)
            self.replay.send_priorities(batch.index, batch.id, td_abs.numpy(), shard=batch.shard)
        q_mean = q_values.detach().gather(1, action.unsqueeze(1)).mean()
        return loss.detach(), q_mean

    def train_step(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything one update changes: schedules, the gradient step, target sync, publication."""
        lc = self.config.learner
        self._schedules()
        loss, q = self.update(batch)
        self.updates += 1
        if self.updates % lc.target_update_period == 0:
            self.target.load_state_dict(self.online.state_dict())
        if self.updates % lc.publish_period == 0:
            self.publish()
        return loss, q

    def publish(self) -> None:
        """Hand the weights to the control server, unless they hold a non-finite number."""
        cpu = self.device.type == "cpu"  # views: the control server copies them once, where they are going
        arrays = parameter_views(self.online) if cpu else weights_to_numpy(self.online)
        if not finite_arrays(arrays):
            self.guard.refuse_publication(self.version + 1)
            return
        self.version += 1
        self.control.set_weights(self.version, arrays, live=cpu)

    # ---- the loop ------------------------------------------------------------------------------
    def run(self, stop_event) -> Outcome:
        """Train until a stop rule or `stop_event` ends the run; then stop everyone, checkpoint, summarize."""
        rules = StopRules(self.config.stop)
        progress = ProgressReporter(RunLog(self.run_dir), self.exporter, self.config.log_interval_s)
        self.control.start()
        self.replay.start()
        self.publish()
        progress.begin(self.updates, self.env_steps)
        self._next_health_check = self._last_checkpoint = progress.start
        shards = self.config.replay.shards
        log.info(
            "learning on %s: control %s, weights %s, replay %s:%d%s",
            self.device,
            self.control.control_address,
            self.control.weights_address,
            self.replay.host,
            self.config.net.sample_port,
            f" and {shards - 1} more shards every {self.config.net.shard_port_stride} ports" if shards > 1 else "",
        )
        outcome: Outcome | None = None
        try:
            while outcome is None:
                outcome = self._iterate(stop_event, rules, progress)
        finally:
            reason = outcome.reason if outcome else "error"
            if outcome is not None and progress.trained_since_row(self.updates):
                # The last, partial interval: a run shorter than log_interval_s still leaves a training row.
                self._report_row(progress, time.monotonic())
            self.control.request_stop(reason)
            time.sleep(STOP_BROADCAST_S)
            self.replay.close()
            self.control.close()
            self.checkpoint()
            progress.runlog.close()
            self.exporter.close()
            self.ctx.destroy(linger=0)
        outcome.env_steps = self.env_steps
        self._write_summary(outcome, rules.best)
        return outcome

    def _iterate(self, stop_event, rules: StopRules, progress: ProgressReporter) -> Outcome | None:
        """One pass of the loop: a batch (or a short wait for one), statistics, periodic work, stop rules."""
        if stop_event.is_set():
            return self._outcome(False, "interrupted", progress.start)
        t_wait = time.monotonic()
        batch = self.replay.get_batch(timeout=0.05)
        now = time.monotonic()
        progress.waited(now - t_wait)
        if batch is None:
            self._warn_if_starved(t_wait, now)
        else:
            self._wait_since = None
            progress.trained(*self.train_step(batch))
        outcome = None
        returns, evals = self.control.take_statistics()
        progress.episodes(returns)
        for version, eval_returns in evals:
            solved = rules.evaluated(float(eval_returns.mean()))
            sc = self.config.stop
            verdict = f"{rules.in_a_row}/{sc.eval_consecutive} in a row >= {sc.eval_return:g}"
            progress.evaluation(now, self._counters(), eval_returns, version, verdict)
            if solved:
                outcome = self._outcome(True, "solved", progress.start)
        self._periodic(now, progress)
        if outcome is None:
            reason = rules.budget_spent(self.env_steps, self.updates, progress.elapsed(now))
            if reason is not None:
                outcome = self._outcome(False, reason, progress.start)
        return outcome

    def _warn_if_starved(self, t_wait: float, now: float) -> None:
        self._wait_since = self._wait_since or t_wait
        if now - self._wait_since > WAIT_WARNING_S:
            stats = self.replay.stats
            log.warning(
                "waiting %.0f s for data from replay (size %s, min_size %d%s)",
                now - self._wait_since,
                stats.get("size", "unknown: no answer"),
                self.config.replay.min_size,
                f", waiting for {stats['waiting']}" if stats.get("waiting") else "",
            )
            self._wait_since = now

    def _periodic(self, now: float, progress: ProgressReporter) -> None:
        """Health checks and the endpoint's counters each second, a row each log interval, checkpoints."""
        if now >= self._next_health_check:
            self.control.report_silent_actors()
            self._next_health_check = now + 1.0
            counters = {"wall_time": progress.elapsed(now), **self._counters(), "weight_version": self.version}
            self.exporter.update(counters)
        if progress.row_due(now):
            self._report_row(progress, now)
        if now - self._last_checkpoint >= self.config.learner.checkpoint_interval_s:
            self.checkpoint()
            self._last_checkpoint = now

    def _outcome(self, solved: bool, reason: str, start: float) -> Outcome:
        return Outcome(solved, reason, time.monotonic() - start, self.env_steps, self.updates)

    def _counters(self) -> dict[str, int]:
        return {"env_steps": self.env_steps, "learner_updates": self.updates}

    def _report_row(self, progress: ProgressReporter, now: float) -> None:
        """What the learner knows for one progress row; the reporter adds the window's rates and writes it."""
        stats = self.replay.stats
        alive = self.control.alive_actors()
        lags = [self.version - a.weight_version for a in alive if a.weight_version >= 0]
        progress.row(
            now,
            {
                **self._counters(),
                "lr": self.optimizer.param_groups[0]["lr"],
                "updates_skipped_nonfinite": self.guard.collect(),
                "weights_refused_nonfinite": self.guard.publications_refused,
                "replay_size": stats.get("size"),
                "replay_insert_per_s": stats.get("insert_rate"),
                "replay_sample_per_s": stats.get("sample_rate"),
                "samples_per_insert": stats.get("samples_per_insert"),
                "replay_rejected": sum(stats.get("rejected", {}).values()) if stats else None,
                "replay_dropped": stats.get("dropped"),
                "replay_lost": stats.get("lost"),
                "weight_version": self.version,
                "actors_alive": len(alive),
                "actor_version_lag": float(np.mean(lags)) if lags else None,
                "messages_rejected": sum(self.control.rejected.values()),
                "learner_unauthenticated": self.control.unauthenticated,
            },
        )
        self.actors_report.write(self.control.alive_actors(within_s=math.inf), self.version)

    def _write_summary(self, outcome: Outcome, best_eval: float | None) -> None:
        summary = {
            "solved": outcome.solved,
            "reason": outcome.reason,
            "wall_s": round(outcome.wall_s, 2),
            "env_steps": outcome.env_steps,
            "learner_updates": outcome.updates,
            "best_eval_return": best_eval,
            "run_dir": str(self.run_dir),
            "checkpoint": str(self.checkpoint_dir / "latest.pt"),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("run over: %s", summary)
