"""The learner's roll of actors: indices handed out and back, records bounded, counters believed only so far.

The registry takes the time as an argument, so expiry after a minute is checked without waiting one.
"""

from __future__ import annotations

import pytest

from common.config import load_config
from learner.actors import ActorRegistry, Refused


def _registry(*overrides: str) -> ActorRegistry:
    return ActorRegistry(load_config("cartpole", ["actor.num_actors=4", *overrides]))


def _report(registry: ActorRegistry, peer: bytes, index: int, steps: int, now: float, stream: str = "s") -> None:
    meta = {"actor_index": index, "env_steps": steps, "transitions_sent": 0, "weight_version": 0, "stream": stream}
    registry.report(peer, meta, 0, 10, now)


def test_indices_of_actors_gone_for_good_are_handed_back_lowest_first() -> None:
    registry = _registry()
    for i in range(6):
        record, new = registry.join(b"p%d" % i, f"i{i}", -1, now=0.0)
        assert new and record.index == i
    for i in (0, 2, 3, 4, 5):  # all but actor 1 keep reporting
        _report(registry, b"p%d" % i, i, 100, now=50.0)
    _report(registry, b"p1", 1, 100, now=10.0)
    assert registry.expire(now=60.0) == []
    gone = registry.expire(now=10.0 + registry.expire_s + 1)
    assert [r.index for r in gone] == [1]
    assert registry.join(b"new", "new", -1, now=80.0)[0].index == 1  # its index, first
    assert registry.join(b"newer", "newer", -1, now=80.0)[0].index == 6  # then beyond N


def test_a_full_roll_gives_way_only_to_the_oldest_silent_actor() -> None:
    registry = _registry()
    for i in range(registry.max_records):
        registry.join(b"p%d" % i, "", -1, now=float(i) / 1000)
    with pytest.raises(Refused, match="too_many_actors"):
        registry.join(b"late", "", -1, now=1.0)  # everyone heard from within the silence limit
    record, _ = registry.join(b"late", "", -1, now=registry.silent_s + 0.5)
    assert len(registry.records) == registry.max_records
    assert record.index == 0  # the oldest one's record and index went to the newcomer


def test_a_reconnected_actor_keeps_its_record_by_its_stream() -> None:
    registry = _registry()
    registry.join(b"old", "inst", 2, now=0.0)
    _report(registry, b"old", 2, 1000, now=1.0, stream="abcd")
    _report(registry, b"new-connection", 2, 3000, now=2.0, stream="abcd")
    assert registry.env_steps == 3000 and len(registry.records) == 1
    _report(registry, b"stranger", 2, 10**9, now=3.0, stream="other")  # taken on, but counts nothing so far
    assert registry.env_steps == 3000 and len(registry.records) == 2
    with pytest.raises(Refused, match="wrong_index"):
        _report(registry, b"new-connection", 3, 4000, now=4.0, stream="abcd")


def test_out_of_range_indices_and_instances_are_refused() -> None:
    registry = _registry()
    for index in (-2, 2**63 - 1):
        with pytest.raises(Refused, match="bad_index"):
            registry.join(b"p", "", index, now=0.0)
    for instance in ("x" * 65, "a\nb"):
        with pytest.raises(Refused, match="bad_instance"):
            registry.join(b"p", instance, -1, now=0.0)
    assert registry.records == {}


def test_over_slots_the_roll_keeps_each_actors_slots_and_their_mean() -> None:
    """2 actors x 4 envs: the ladder of 8 slots; a joiner beyond N repeats the slots of index mod N."""
    registry = ActorRegistry(load_config("cartpole", ["actor.num_actors=2", "actor.epsilon_over=slots"]))
    assert not registry.sends_epsilon
    ladder = [0.4 ** (1 + 7 * g / 7) for g in range(8)]
    for peer, index in ((b"a", 0), (b"b", 1), (b"c", 2), (b"d", 3)):
        record = registry.join(peer, peer.decode(), -1, now=0.0)[0]
        slots = ladder[4 * (index % 2) : 4 * (index % 2) + 4]
        assert record.index == index and registry.epsilons_of(index) == pytest.approx(slots)
        assert record.epsilon == pytest.approx(sum(slots) / 4)
    over_actors = ActorRegistry(load_config("cartpole", ["actor.num_actors=2", "actor.epsilon_over=actors"]))
    assert over_actors.sends_epsilon and over_actors.epsilon_of(1) == pytest.approx(0.4**8)
