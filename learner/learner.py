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
from learner.replay_client import Batch, ReplayClient

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
        self._train_returns: list[float] = []
        self.checkpoint_dir = run_dir / "checkpoints"
        self.actors_report = ActorsReport(run_dir / "actors.json")
        self.exporter = start_exporter(config.net, "learner")  # a no-op unless net.metrics_port is set
        # Keys load here, before any thread starts, so a bad key file is a plain startup error.
        curve = ClientSecurity.from_config(config.net)
        self.ctx = zmq.Context()
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
            self.replay.send_priorities(batch.index, batch.id, host, ready=landed)
        else:
            if self.guard.host_check(loss, grad_norm, batch.id, td_abs):
                self.optimizer.step()
            else:
                td_abs = torch.nan_to_num(td_abs, nan=0.0, posinf=0.0, neginf=0.0)
            self.replay.send_priorities(batch.index, batch.id, td_abs.numpy())
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
    def run(self, stop_event) -> Outcome:  # noqa: C901 - one loop, grouped by concern
        config, lc, sc = self.config, self.config.learner, self.config.stop
        runlog = RunLog(self.run_dir)
        self.control.start()
        self.replay.start()
        self.publish()
        start = last_row = time.monotonic()
        last_checkpoint = next_health_check = start
        row_updates, row_steps = self.updates, self.env_steps
        losses: list[torch.Tensor] = []  # read back once a row: each read would wait for the GPU
        qs: list[torch.Tensor] = []
        waited = 0.0
        wait_since: float | None = None
        consecutive = 0
        best_eval = -math.inf
        outcome: Outcome | None = None
        log.info(
            "learning on %s: control %s, weights %s, replay %s:%d",
            self.device,
            self.control.control_address,
            self.control.weights_address,
            self.replay.host,
            config.net.sample_port,
        )
        try:
            while outcome is None:
                if stop_event.is_set():
                    outcome = self._outcome(False, "interrupted", start)
                    break
                t_wait = time.monotonic()
                batch = self.replay.get_batch(timeout=0.05)
                now = time.monotonic()
                if batch is None:
                    waited += now - t_wait
                    wait_since = wait_since or t_wait
                    if now - wait_since > WAIT_WARNING_S:
                        stats = self.replay.stats
                        log.warning(
                            "waiting %.0f s for data from replay (size %s, min_size %d%s)",
                            now - wait_since,
                            stats.get("size", "unknown: no answer"),
                            config.replay.min_size,
                            f", waiting for {stats['waiting']}" if stats.get("waiting") else "",
                        )
                        wait_since = now
                else:
                    waited += now - t_wait
                    wait_since = None
                    loss, q = self.train_step(batch)
                    losses.append(loss)
                    qs.append(q)

                returns, evals = self.control.take_statistics()
                for version, eval_returns in evals:
                    mean = float(eval_returns.mean())
                    best_eval = max(best_eval, mean)
                    consecutive = consecutive + 1 if mean >= sc.eval_return else 0
                    runlog.write(
                        {
                            "wall_time": now - start,
                            "env_steps": self.env_steps,
                            "learner_updates": self.updates,
                            "eval_return_mean": mean,
                            "eval_return_std": float(eval_returns.std()),
                            "eval_episodes": len(eval_returns),
                            "eval_weight_version": version,
                        }
                    )
                    self.exporter.update({"eval_return_mean": mean, "eval_weight_version": version})
                    print(
                        f"eval  t={now - start:6.1f}s steps={self.env_steps:>8d} return {mean:7.1f} "
                        f"(weights v{version}, {consecutive}/{sc.eval_consecutive} in a row >= {sc.eval_return:g})",
                        flush=True,
                    )
                    if consecutive >= sc.eval_consecutive:
                        outcome = self._outcome(True, "solved", start)
                self._train_returns.extend(returns)

                if now >= next_health_check:
                    self.control.report_silent_actors()
                    next_health_check = now + 1.0
                    counters = {"wall_time": now - start, "env_steps": self.env_steps, "learner_updates": self.updates}
                    self.exporter.update({**counters, "weight_version": self.version})
                if now - last_row >= config.log_interval_s:
                    self._write_row(runlog, now - start, now - last_row, row_updates, row_steps, losses, qs, waited)
                    row_updates, row_steps, last_row = self.updates, self.env_steps, now
                    losses, qs, waited = [], [], 0.0
                if now - last_checkpoint >= lc.checkpoint_interval_s:
                    self.checkpoint()
                    last_checkpoint = now
                if outcome is None:
                    if self.env_steps >= sc.max_env_steps:
                        outcome = self._outcome(False, f"env-step budget {sc.max_env_steps} reached", start)
                    elif self.updates >= sc.max_updates:
                        outcome = self._outcome(False, f"update budget {sc.max_updates} reached", start)
                    elif now - start >= sc.max_wall_s:
                        outcome = self._outcome(False, f"time budget {sc.max_wall_s:g}s reached", start)
        finally:
            reason = outcome.reason if outcome else "error"
            if outcome is not None and self.updates > row_updates:
                # The last, partial interval: a run shorter than log_interval_s still leaves a training row.
                end = time.monotonic()
                self._write_row(runlog, end - start, end - last_row, row_updates, row_steps, losses, qs, waited)
            self.control.request_stop(reason)
            time.sleep(STOP_BROADCAST_S)
            self.replay.close()
            self.control.close()
            self.checkpoint()
            runlog.close()
            self.exporter.close()
            self.ctx.destroy(linger=0)
        assert outcome is not None
        outcome.env_steps = self.env_steps
        self._write_summary(outcome, best_eval)
        return outcome

    def _outcome(self, solved: bool, reason: str, start: float) -> Outcome:
        return Outcome(solved, reason, time.monotonic() - start, self.env_steps, self.updates)

    def _write_row(
        self,
        runlog: RunLog,
        wall: float,
        span: float,
        row_updates: int,
        row_steps: int,
        losses: list[torch.Tensor],
        qs: list[torch.Tensor],
        waited: float,
    ) -> None:
        stats = self.replay.stats
        returns, self._train_returns = self._train_returns, []
        alive = self.control.alive_actors()
        lags = [self.version - a.weight_version for a in alive if a.weight_version >= 0]
        row = {
            "wall_time": wall,
            "env_steps": self.env_steps,
            "learner_updates": self.updates,
            "env_steps_per_s": (self.env_steps - row_steps) / span,
            "updates_per_s": (self.updates - row_updates) / span,
            "loss": float(torch.stack(losses).mean()) if losses else None,
            "q_mean": float(torch.stack(qs).mean()) if qs else None,
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
            "learner_wait_fraction": min(waited / span, 1.0),
            "train_return_mean": float(np.mean(returns)) if returns else None,
            "train_episodes": len(returns),
            "weight_version": self.version,
            "actors_alive": len(alive),
            "actor_version_lag": float(np.mean(lags)) if lags else None,
            "messages_rejected": sum(self.control.rejected.values()),
            "learner_unauthenticated": self.control.unauthenticated,
        }
        runlog.write(row)
        self.exporter.update(row)
        self.actors_report.write(self.control.alive_actors(within_s=math.inf), self.version)
        train = f"{row['train_return_mean']:7.1f}" if returns else "      -"
        print(
            f"train t={wall:6.1f}s steps={self.env_steps:>8d} ({row['env_steps_per_s']:6.0f}/s) "
            f"updates={self.updates:>7d} ({row['updates_per_s']:5.0f}/s) replay={stats.get('size', 0):>7} "
            f"return {train} loss {row['loss'] or 0:.3f} actors {len(alive)}",
            flush=True,
        )

    def _write_summary(self, outcome: Outcome, best_eval: float) -> None:
        summary = {
            "solved": outcome.solved,
            "reason": outcome.reason,
            "wall_s": round(outcome.wall_s, 2),
            "env_steps": outcome.env_steps,
            "learner_updates": outcome.updates,
            "best_eval_return": best_eval if math.isfinite(best_eval) else None,
            "run_dir": str(self.run_dir),
            "checkpoint": str(self.checkpoint_dir / "latest.pt"),
        }
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("run over: %s", summary)
