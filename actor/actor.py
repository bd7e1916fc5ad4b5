"""The actor: steps a vector of environments epsilon-greedily and pushes n-step transitions to replay.

Each actor has one global index i (from the launcher or assigned by the learner) and acts with the
Ape-X epsilon_i = base ** (1 + alpha * i / (N - 1)), so the population explores at many rates at once;
with actor.epsilon_over = "slots" the same formula runs over every environment slot of the population
instead (common/epsilon_ladder.py), each env of the vector with its own epsilon.
Initial priorities are the transitions' own |TD errors| under the actor's network copy (Ape-X), so new
data is sampled in proportion to how surprising it is rather than all at the maximum priority. As in the
Ape-X paper they come from the Q-values computed for acting, not from a second pass over every batch.

Every process numbers its stream of transitions (a random stream id, and how many it sent before each
message) and ends it with a `stream_end` holding its totals, so that replay can account for each
transition: stored, rejected, dropped or lost (replay/accounting.py).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Callable

import numpy as np
import zmq

from actor.exploration import check_epsilon, choose_actions
from actor.link import LearnerLink
from actor.nstep import NStepBuilder, NStepTransitions, true_next_obs
from common.config import RunConfig
from common.envs import EpisodeScores, env_spec, make_vector_env
from common.epsilon_ladder import slot_epsilons
from common.frame_dedup import dedup_stacks
from common.policy_network import policy_network
from common.process import derive_seed
from common.run_keys import local_ingest_address
from common.security import secure_client
from common.shards import shard_of_actor
from common.sockets import BULK_KERNEL_BUFFER, connect, is_loopback, make_socket, send_frames
from common.wire import MAX_EPISODES_PER_REPORT

log = logging.getLogger(__name__)

SEND_POLL_MS = 100
STREAM_END_TIMEOUT_S = 4.0  # bounded, so that a hung replay server cannot hold an actor's shutdown ...
IN_PLACE_RETRIES = 3  # a pass the writer overtook: twice again in place, then from a private copy
WEIGHTS_POLL_S = 0.005  # how often the acting loop looks for new weights (published every ~0.1 s)
FLUSH_TIMEOUT_S = 3.0  # ... neither here: how long the last queued messages get to leave at exit


def initial_priorities(
    transitions: NStepTransitions, next_values: np.ndarray, q: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """|TD error| of each transition under this actor's network (Double-DQN form, online net only).

    Q(obs, action) is the value the action was chosen with, and max_a Q(next_obs, a) the acting pass over
    next_obs (`next_values`, one per env), so no forward pass is repeated. The exception is rows flushed
    by an episode end, whose next_obs is the final observation, which no acting pass saw: terminated ones
    need no value (discount 0), truncated ones get a pass of their own, over those rows only.
    """
    bootstrap = next_values[transitions.env_index]
    if np.count_nonzero(transitions.ended):
        bootstrap[transitions.ended] = 0.0
        truncated = (transitions.ended & (transitions.discount != 0)).nonzero()[0]
        if truncated.size:
            bootstrap[truncated] = q(transitions.next_obs[truncated]).max(axis=1)
    target = transitions.reward + transitions.discount * bootstrap
    return np.abs(target - transitions.action_value).astype(np.float32, copy=False)


class Outbox:
    """Transitions gathered into messages of exactly send_size rows (the last one may be short).

    Rows are copied into the message's arrays as they come, rather than kept as parts and concatenated:
    a step emits a dozen rows, and every numpy call per step counts at that size.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.count = 0  # rows in the message being filled
        self._message: dict[str, np.ndarray] | None = None

    def add(self, transitions: NStepTransitions, version: int, priority: np.ndarray) -> list[dict[str, np.ndarray]]:
        """Copy the rows in; return the messages they complete (usually none or one)."""
        full = []
        rows = len(transitions)
        first = 0
        while first < rows:
            if self._message is None:
                self._message = self._allocate(transitions)
            last = min(rows, first + self.size - self.count)
            into = slice(self.count, self.count + last - first)
            part = slice(first, last)
            message = self._message
            message["obs"][into] = transitions.obs[part]
            message["action"][into] = transitions.action[part]
            message["reward"][into] = transitions.reward[part]
            message["discount"][into] = transitions.discount[part]
            message["next_obs"][into] = transitions.next_obs[part]
            message["version"][into] = version
            message["priority"][into] = priority[part]
            self.count += last - first
            first = last
            if self.count == self.size:
                full.append(message)
                self._message, self.count = None, 0
        return full

    def take(self) -> dict[str, np.ndarray]:
        """The partly filled message (count > 0), emptying the outbox."""
        assert self._message is not None
        message = {name: array[: self.count] for name, array in self._message.items()}
        self._message, self.count = None, 0
        return message

    def _allocate(self, like: NStepTransitions) -> dict[str, np.ndarray]:
        """Fresh arrays for each message: a sent one may still be queued in the socket, zero-copy."""
        obs_shape, obs_dtype = like.obs.shape[1:], like.obs.dtype
        return {
            "obs": np.empty((self.size, *obs_shape), obs_dtype),
            "action": np.empty(self.size, np.int64),
            "reward": np.empty(self.size, np.float32),
            "discount": np.empty(self.size, np.float32),
            "next_obs": np.empty((self.size, *obs_shape), obs_dtype),
            "version": np.empty(self.size, np.int64),
            "priority": np.empty(self.size, np.float32),
        }


class Actor:
    def __init__(self, link: LearnerLink, config: RunConfig, actor_index: int, epsilon: float | None = None) -> None:
        """`epsilon`: the one the learner chose (its welcome's) for every env; None computes the Ape-X
        epsilons here, one per env slot (all equal unless actor.epsilon_over is "slots")."""
        self.link = link
        self.config = config
        self.index = actor_index
        self.spec = env_spec(config.env)
        ac = config.actor
        num_envs = config.env.num_envs
        if epsilon is None:
            slots = slot_epsilons(
                actor_index, num_envs, ac.num_actors, ac.epsilon_base, ac.epsilon_alpha, ac.epsilon_over
            )
        else:
            slots = [float(epsilon)] * num_envs
        # Checked once here, not every step; a scalar when every env shares it (the cheapest comparison).
        self.epsilon = check_epsilon(slots[0] if len(set(slots)) == 1 else np.asarray(slots), num_envs)
        self.q = policy_network(  # numpy for MLPs: no torch in the process at all
            self.spec.obs_shape, self.spec.num_actions, config.network, seed=derive_seed(config.seed, 1, actor_index)
        )
        self.rng = np.random.default_rng(derive_seed(config.seed, 2, actor_index))
        self.env = make_vector_env(config.env, config.env.num_envs)
        self.nstep = NStepBuilder(
            config.env.num_envs, config.learner.n_step, config.learner.gamma, self.spec.obs_shape, self.spec.obs_dtype
        )
        replay_host = config.net.replay_host or config.net.public_host or link.learner_host
        if is_loopback(replay_host) and not is_loopback(link.learner_host):
            replay_host = link.learner_host
        # Its own context, so that closing can wait for exactly this socket's queue to leave (see close).
        self._push_ctx = zmq.Context()
        self.push = make_socket(
            self._push_ctx,
            zmq.PUSH,
            hwm=config.net.send_hwm,
            kernel_buffer_bytes=BULK_KERNEL_BUFFER,
            heartbeats=False,
        )
        # On replay's host with run keys, the ipc socket in the private run-keys directory: no CURVE cost.
        run_keys = link.curve is not None and link.curve.run_keys  # not with keys of the user's own
        self.shard = shard_of_actor(actor_index, config.replay.shards)  # its replay server (common/shards.py)
        local = local_ingest_address(self.shard) if run_keys and is_loopback(replay_host) else None
        if local is not None:
            self.push.connect(local)
        else:
            secure_client(self.push, link.curve)
            connect(self.push, replay_host, config.net.shard_ports(self.shard)[0])
        self.stream = secrets.token_hex(4)
        # Replay keeps (K, H, W) observations as distinct frames unless replay.frame_dedup is off (MinAtar's
        # channels are not a stack of frames): then plain rows are what it stores anyway.
        self.stacked_frames = len(self.spec.obs_shape) == 3 and config.replay.frame_dedup
        self.env_steps = 0
        self.transitions_sent = 0
        self.transitions_dropped = 0
        self.returns: list[float] = []
        self.lengths: list[int] = []
        self._next_report = float("inf")  # set when run() starts
        self._last_report = (0, time.monotonic())  # (env steps, time) at the last report

    def _send(self, arrays: dict[str, np.ndarray], stop: threading.Event) -> None:
        """Push one batch, waiting (backpressure) while replay's queue is full; weights and reports keep flowing."""
        count = arrays["action"].shape[0]
        meta = {"actor_index": self.index, "stream": self.stream, "sent_before": self.transitions_sent, "count": count}
        kind = "transitions"
        if self.stacked_frames:  # each distinct frame once: about 6x fewer bytes than full stacks
            kind = "frame_transitions"
            arrays["frames"], arrays["obs_frames"], arrays["next_obs_frames"] = dedup_stacks(
                arrays.pop("obs"), arrays.pop("next_obs")
            )
        frames = self.link.encode(kind, meta, arrays)
        while True:
            if self.push.poll(SEND_POLL_MS, zmq.POLLOUT):
                send_frames(self.push, frames)
                self.transitions_sent += count
                return
            self._take_weights()
            now = time.monotonic()
            if now >= self._next_report:  # held back by replay, still alive to the learner
                self._report_due(now)
            if stop.is_set() or self.link.stop_reason is not None:
                self.transitions_dropped += count
                log.info("dropped %d unsent transitions at shutdown", count)
                return

    def _end_stream(self) -> bool:
        """Tell replay this stream's totals, after everything it sent (same socket, so same order)."""
        meta = {
            "actor_index": self.index,
            "stream": self.stream,
            "sent": self.transitions_sent,
            "dropped": self.transitions_dropped,
        }
        if self.push.poll(int(STREAM_END_TIMEOUT_S * 1000), zmq.POLLOUT):
            self.push.send_multipart(self.link.encode("stream_end", meta))
            return True
        log.warning("replay is not reading: stream %s ends without its totals reaching it", self.stream)
        return False

    def _report_due(self, now: float) -> None:
        """The periodic actor_stats: the learner takes an actor it has not heard from for a few seconds
        for dead."""
        steps, since = self._last_report
        self._report((self.env_steps - steps) / max(now - since, 1e-9))
        self._last_report = (self.env_steps, now)
        self._next_report = now + self.config.actor.stats_interval_s

    def _take_weights(self) -> None:
        # From shared memory straight into the network (one copy), or used in place where it can be.
        self.link.newest_weights(self.q.load, getattr(self.q, "attach", None))

    def _values(self, obs: np.ndarray) -> np.ndarray:
        """Q-values of `obs`. With weights used in place, a pass that the writer overtook (it began to
        overwrite them) is done again with the newest version; the last retry copies it first."""
        q = self.q(obs)
        for retry in range(IN_PLACE_RETRIES):
            if self.link.weights_whole():
                break
            if retry < IN_PLACE_RETRIES - 1:
                self._take_weights()
            else:
                self.link.newest_weights(self.q.load)  # a private copy: nothing can overtake it
            q = self.q(obs)
        return q

    def _report(self, steps_per_s: float) -> None:
        meta = {
            "actor_index": self.index,
            "env_steps": self.env_steps,
            "transitions_sent": self.transitions_sent,
            "transitions_dropped": self.transitions_dropped,
            "stream": self.stream,
            "weight_version": self.link.version,
            "epsilon": float(np.mean(self.epsilon)),  # over the env slots: the expected share of random actions
            "steps_per_s": steps_per_s,
        }
        if len(self.returns) > MAX_EPISODES_PER_REPORT:  # the newest, as many as one report may carry
            del self.returns[:-MAX_EPISODES_PER_REPORT], self.lengths[:-MAX_EPISODES_PER_REPORT]
        arrays = {
            "episode_returns": np.asarray(self.returns, dtype=np.float32),
            "episode_lengths": np.asarray(self.lengths, dtype=np.int64),
        }
        if self.link.send("actor_stats", meta, arrays):  # else kept for the next report
            self.returns, self.lengths = [], []

    def run(self, stop: threading.Event) -> None:
        ac = self.config.actor
        num_envs = self.config.env.num_envs
        obs, _ = self.env.reset(seed=derive_seed(self.config.seed, 3, self.index) % 2**31)
        scores = EpisodeScores(self.config.env, num_envs)  # Atari: whole games' real scores, not lives'
        every_env = np.arange(num_envs)
        outbox = Outbox(ac.send_size)
        self._next_report = time.monotonic() + ac.stats_interval_s
        self._last_report = (0, time.monotonic())
        low, high = float(np.min(self.epsilon)), float(np.max(self.epsilon))
        shown = f"{low:.4g}" if low == high else f"{high:.4g}..{low:.4g} (one per env)"
        log.info("actor %d acting with epsilon %s on %d x %s", self.index, shown, num_envs, self.config.env.id)
        self._take_weights()
        next_weights_check = time.monotonic() + WEIGHTS_POLL_S
        q, q_version = self._values(obs), self.link.version
        while not stop.is_set() and self.link.stop_reason is None:
            actions = choose_actions(q, self.epsilon, self.rng)
            next_obs, rewards, terminated, truncated, info = self.env.step(actions)
            now = time.monotonic()  # one clock read a step serves the weight check and the report
            if now >= self._next_report:
                self._report_due(now)
            if now >= next_weights_check:  # not every step: each check is a few socket calls
                self._take_weights()
                next_weights_check = now + WEIGHTS_POLL_S
            # One pass over next_obs both chooses the next actions and values this step's bootstrap states.
            next_q, next_version = self._values(next_obs), self.link.version
            done = terminated | truncated
            any_done = np.count_nonzero(done)  # (cheaper than done.any(), which matters once a step)
            # Unless an episode ended, next_obs is the true next observation: the builder copies what it keeps.
            bootstrap_obs = true_next_obs(next_obs, terminated, truncated, info) if any_done else next_obs
            acted_values = q[every_env, actions]
            transitions = self.nstep.add(obs, actions, rewards, terminated, truncated, bootstrap_obs, acted_values)
            self.env_steps += num_envs
            returns, lengths = scores.step(rewards, done, info)
            if returns:
                self.returns.extend(returns)
                self.lengths.extend(lengths)
            if transitions is not None:
                priority = initial_priorities(transitions, next_q.max(axis=1), self._values)
                for message in outbox.add(transitions, q_version, priority):  # the weights that acted
                    self._send(message, stop)
            obs, q, q_version = next_obs, next_q, next_version
        if outbox.count:
            if self.link.stop_reason is None:
                self._send(outbox.take(), stop)
            else:  # the run is over: replay is stopping too
                self.transitions_dropped += outbox.count
        self._end_stream()
        self._report(0.0)
        log.info(
            "actor %d stopping (%s): %d env steps; stream %s: %d transitions sent, %d dropped unsent",
            self.index,
            self.link.stop_reason or "signal",
            self.env_steps,
            self.stream,
            self.transitions_sent,
            self.transitions_dropped,
        )

    def close(self) -> None:
        """Let the queued tail of the stream (stream_end last) leave, for at most FLUSH_TIMEOUT_S.

        A context's term() returns once its sockets' queues are sent or their linger has run out, so
        its duration tells whether the tail left. If it did not, replay keeps the stream open and this
        log line is the only record of how many transitions may not have arrived.
        """
        self.env.close()
        start = time.monotonic()
        self.push.close(linger=int(FLUSH_TIMEOUT_S * 1000))
        self._push_ctx.term()
        if time.monotonic() - start >= FLUSH_TIMEOUT_S - 0.05:
            bound = (self.config.net.send_hwm + 1) * self.config.actor.send_size
            log.warning(
                "replay did not take the end of stream %s within %.0f s: up to %d of the %d transitions sent, "
                "and the stream's totals, may not have reached it",
                self.stream,
                FLUSH_TIMEOUT_S,
                bound,
                self.transitions_sent,
            )
