"""The learner's roll of actors: who holds which global index, at which epsilon, with how many steps.

Every count here comes from peers, so none of it is believed as sent:

- A record belongs to one actor *instance* (the random `instance` of its hello, or else its ROUTER
  identity, one per connection). A retry of the same instance gets the same record and index back,
  so hellos queued while the learner was down take one index, not one each; a hello from another
  instance never touches an existing record, whatever index it names.
- Statistics count only from the connection that holds the record. An actor whose connection was
  re-made (a partition, a learner restart) is recognised by the stream id of its reports; one the
  learner never heard of is taken on from its first report, which counts nothing (its steps so far
  are in a resumed checkpoint's total already).
- `env_steps` is cumulative per instance: a report below the last one is refused, and a report may
  add at most what a token bucket of `STEPS_PER_ENV_PER_S` per environment allows since the last one
  (a burst of `BURST_S` seconds' worth); the rest is refused and counted. A lying actor can thus add
  only about what a fast honest one would.
- Records are bounded: one actor per connection, `max(MIN_RECORDS, 4 N)` in all (the oldest silent
  one gives way to a newcomer), and a record silent for `EXPIRE_AFTER_S` is dropped and its index
  handed back.

Indices and exploration: an actor that sends index -1 gets the lowest index no record holds, so the
population's `N = actor.num_actors` indices [0, N) are filled first and re-used once their holders are
gone for good. Beyond N the lowest free index >= N is given, and every index explores with the epsilon
of `index mod N` (`common.epsilon_ladder.apex_epsilon`): a grown population repeats the Ape-X ladder from
its most exploring rung (0.4 with the defaults), never extrapolating it to greedy. With N = 1 every
actor gets the base epsilon. The learner sends the epsilon it chose in `welcome.epsilon`.

With `actor.epsilon_over = "slots"` the ladder runs over the N * E environment slots instead (slot j of
index i is (i mod N) * E + j, `common.epsilon_ladder.slot_epsilons`); an actor's slots then differ, so
the welcome carries no `epsilon` (the actor computes them from the config by the same rule) and the
record keeps their mean, the actor's expected share of random actions, which is also what actors report.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from common.config import RunConfig
from common.epsilon_ladder import slot_epsilons
from common.wire import MAX_EPISODES_PER_REPORT

log = logging.getLogger(__name__)

STEPS_PER_ENV_PER_S = 20_000  # far above any gymnasium env stepped by one actor process
BURST_S = 5.0
SILENT_AFTER_S = 5.0  # actors report every actor.stats_interval_s (1 s by default)
EXPIRE_AFTER_S = 60.0
MIN_RECORDS = 64
MAX_ACTOR_INDEX = 1 << 20
MAX_INSTANCE_CHARS = 64
MAX_ACTOR_LINES = 5  # per check: a crowd going silent at once is one line more, not a line each


class Refused(Exception):
    """A hello or report not taken; `reason` is the counter's key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class ActorRecord:
    index: int
    key: tuple[str, Any]  # ("instance", str) or ("peer", ROUTER identity)
    peer: bytes
    epsilon: float  # the one the learner chose (with epsilon_over "slots", the mean over its env slots)
    last_seen: float
    tokens: float  # env steps this actor may still add (token bucket)
    env_steps: int = 0  # its last accepted cumulative count
    transitions_sent: int = 0
    weight_version: int = -1
    reported_epsilon: float = math.nan
    stream: str = ""
    silent: bool = False
    host: str = "?"  # as its hello said, escaped and cut (common.safe_log.printable)
    restarts: int = 0  # earlier processes that joined at this index


class ActorRegistry:
    """Not thread-safe: the control server calls it under its lock."""

    def __init__(self, config: RunConfig) -> None:
        ac = config.actor
        self.population = ac.num_actors
        self._base, self._alpha = ac.epsilon_base, ac.epsilon_alpha
        self._over, self._num_envs = ac.epsilon_over, config.env.num_envs
        self.sends_epsilon = ac.epsilon_over == "actors"  # one epsilon per actor, so `welcome` can carry it
        self.steps_per_s = STEPS_PER_ENV_PER_S * config.env.num_envs
        self.burst = self.steps_per_s * BURST_S
        self.silent_s = max(SILENT_AFTER_S, 3 * ac.stats_interval_s)
        self.expire_s = max(EXPIRE_AFTER_S, 30 * ac.stats_interval_s)
        self.max_records = max(MIN_RECORDS, 4 * ac.num_actors)
        self.records: dict[tuple[str, Any], ActorRecord] = {}
        self._joins: Counter[int] = Counter()  # processes that joined at each index in [0, 4N): restarts
        self._by_peer: dict[bytes, tuple[str, Any]] = {}
        self.env_steps = 0  # summed from accepted increments, restarts included
        self.refused: Counter[str] = Counter()  # reports taken in part (the callers count refusals)

    def epsilons_of(self, index: int) -> list[float]:
        """The epsilon of each env slot of the actor at `index`."""
        return slot_epsilons(index, self._num_envs, self.population, self._base, self._alpha, self._over)

    def epsilon_of(self, index: int) -> float:
        """The actor's epsilon; with epsilon_over "slots", its slots' mean."""
        slots = self.epsilons_of(index)
        return slots[0] if self.sends_epsilon else sum(slots) / len(slots)

    def free_index(self) -> int:
        """The lowest index no record holds: [0, N) first, then N, N+1, ..."""
        held = {record.index for record in self.records.values()}
        index = 0
        while index in held:
            index += 1
        return index

    # ---- hello -----------------------------------------------------------------------------------
    def join(self, peer: bytes, instance: str, requested: int, now: float, host: str = "?") -> tuple[ActorRecord, bool]:
        """The record for this hello, and whether it is new. Raises Refused."""
        if requested < -1 or requested >= MAX_ACTOR_INDEX:
            raise self._refuse("bad_index", f"actor_index {requested} outside [-1, {MAX_ACTOR_INDEX})")
        if len(instance) > MAX_INSTANCE_CHARS or not instance.isprintable():
            raise self._refuse("bad_instance", f"instance must be <= {MAX_INSTANCE_CHARS} printable characters")
        key = ("instance", instance) if instance else ("peer", peer)
        record = self.records.get(key)
        if record is not None:  # a retry of the same instance: the same answer, nothing reset
            self._bind(record, peer)
            record.last_seen = now
            return record, False
        if peer in self._by_peer:
            raise self._refuse("one_actor_per_connection", "this connection has joined as another actor")
        self._make_room(now)
        index = requested if requested >= 0 else self.free_index()
        record = ActorRecord(index, key, peer, self.epsilon_of(index), now, self.burst, host=host)
        if index < self.max_records:  # bounded: a flood of made-up indices grows nothing
            record.restarts = self._joins[index]
            self._joins[index] += 1
        self.records[key] = record
        self._by_peer[peer] = key
        return record, True

    def _bind(self, record: ActorRecord, peer: bytes) -> None:
        """Statistics of `record` come from `peer` from now on (its connection was re-made)."""
        if record.peer == peer:
            return
        if self._by_peer.get(peer, record.key) != record.key:
            raise self._refuse("one_actor_per_connection", "this connection speaks for another actor")
        if self._by_peer.get(record.peer) == record.key:
            del self._by_peer[record.peer]
        record.peer = peer
        self._by_peer[peer] = record.key

    def _make_room(self, now: float) -> None:
        if len(self.records) < self.max_records:
            return
        silent = [r for r in self.records.values() if now - r.last_seen > self.silent_s]
        if not silent:
            raise self._refuse("too_many_actors", f"{len(self.records)} actors, all reporting")
        self._remove(min(silent, key=lambda r: r.last_seen))

    # ---- actor_stats -----------------------------------------------------------------------------
    def report(self, peer: bytes, meta: Mapping[str, Any], episodes: int, version: int, now: float) -> ActorRecord:
        """Take one actor_stats report's counters; raises Refused (nothing taken) for a bad one.
        `version` is the newest published weight version, which no actor can be ahead of."""
        if episodes > MAX_EPISODES_PER_REPORT:
            raise self._refuse("too_many_episodes", f"{episodes} episodes in one report")
        steps, index = meta["env_steps"], meta["actor_index"]
        record = self._reporter(peer, index, meta.get("stream") or "", steps, now)
        if steps < record.env_steps:
            raise self._refuse("counter_backwards", f"env_steps {steps} after {record.env_steps}")
        record.tokens = min(self.burst, record.tokens + (now - record.last_seen) * self.steps_per_s)
        record.last_seen = now
        added = steps - record.env_steps
        if added > record.tokens:
            self.refused["steps_implausible"] += 1
            added = int(record.tokens)  # the rest is refused: cumulative, so nothing is counted twice
        record.tokens -= added
        record.env_steps = steps
        self.env_steps += added
        record.transitions_sent = max(0, meta["transitions_sent"])
        record.weight_version = min(max(-1, meta["weight_version"]), version)
        epsilon = meta.get("epsilon")
        record.reported_epsilon = float(epsilon) if epsilon is not None and 0 <= epsilon <= 1 else math.nan
        return record

    def _reporter(self, peer: bytes, index: int, stream: str, steps: int, now: float) -> ActorRecord:
        if steps < 0 or index < 0 or index >= MAX_ACTOR_INDEX:
            raise self._refuse("bad_counter", f"actor_index {index}, env_steps {steps}")
        key = self._by_peer.get(peer)
        if key is not None:
            record = self.records[key]
            if record.index != index:
                raise self._refuse("wrong_index", f"actor {record.index}'s connection reported for {index}")
            record.stream = record.stream or stream
            return record
        same = [r for r in self.records.values() if stream and r.stream == stream and r.index == index]
        if same:  # the same actor, on a new connection
            self._bind(same[0], peer)
            return same[0]
        # Never said hello to this learner (it restarted): taken on from here, counting nothing so far.
        self._make_room(now)
        record = ActorRecord(index, ("peer", peer), peer, self.epsilon_of(index), now, self.burst, env_steps=steps)
        record.stream = stream
        self.records[record.key] = record
        self._by_peer[peer] = record.key
        return record

    # ---- expiry ----------------------------------------------------------------------------------
    def expire(self, now: float) -> list[ActorRecord]:
        """Drop the records of actors gone for good; their indices are free again."""
        gone = [r for r in self.records.values() if now - r.last_seen > self.expire_s]
        for record in gone:
            self._remove(record)
        return gone

    def silence_changes(self, now: float, silent_s: float | None = None) -> list[tuple[int, bool, float]]:
        """(index, silent now, seconds since heard) of each actor that went silent or came back."""
        limit = self.silent_s if silent_s is None else silent_s
        changed = []
        for record in self.records.values():
            silent = now - record.last_seen > limit
            if silent != record.silent:
                changed.append((record.index, silent, now - record.last_seen))
            record.silent = silent
        return changed

    def _remove(self, record: ActorRecord) -> None:
        del self.records[record.key]
        if self._by_peer.get(record.peer) == record.key:
            del self._by_peer[record.peer]

    @staticmethod
    def _refuse(reason: str, detail: str) -> Refused:
        return Refused(reason, detail)


def log_silence(changed: list[tuple[int, bool, float]]) -> None:
    for index, silent, idle in changed[:MAX_ACTOR_LINES]:
        if silent:
            log.warning("actor %d silent for %.0f s (dead, hung or unreachable)", index, idle)
        else:
            log.info("actor %d is reporting again", index)
    if len(changed) > MAX_ACTOR_LINES:
        log.warning("%d more actors went silent or came back", len(changed) - MAX_ACTOR_LINES)


def log_expired(gone: list[ActorRecord]) -> None:
    for record in gone[:MAX_ACTOR_LINES]:
        log.info("actor %d gone for good: its record is dropped, its index free again", record.index)
    if len(gone) > MAX_ACTOR_LINES:
        log.info("%d more actor records dropped", len(gone) - MAX_ACTOR_LINES)
