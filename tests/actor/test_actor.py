"""The actor's output: priorities from the acting passes (equal to a second, explicit pass when the weights
stay put) and messages of exactly send_size transitions."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import zmq

from actor.actor import Actor, Outbox
from actor.nstep import NStepTransitions
from common.config import load_config
from common.wire import Encoder, decode


class StillLink:
    """What Actor uses of a LearnerLink, with weights that never change and nothing on the network."""

    learner_host = "127.0.0.1"
    curve = None
    version = 7
    stop_reason = None

    def __init__(self) -> None:
        self.encode = Encoder("test-actor")

    def newest_weights(self, load=None, attach=None):
        return None

    def weights_whole(self) -> bool:
        return True

    def send(self, kind: str, meta: dict, arrays: dict) -> bool:
        return True


class RecordingPush:
    """Stands in for the PUSH socket to replay: always writable, keeps what is sent."""

    def __init__(self) -> None:
        self.messages: list[list[bytes]] = []
        self.parts: list[bytes] = []

    def poll(self, timeout: int, flags: int) -> bool:
        return True

    def send(self, frame, flags: int = 0, copy: bool = True) -> None:
        self.parts.append(bytes(frame))
        if not flags & zmq.SNDMORE:
            self.messages.append(self.parts)
            self.parts = []

    def send_multipart(self, frames: list, copy: bool = True) -> None:
        for i, frame in enumerate(frames):
            self.send(frame, zmq.SNDMORE if i < len(frames) - 1 else 0)

    def close(self, linger: int = 0) -> None:
        pass


def explicit_priorities(q, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """The former computation: a forward pass over obs and next_obs of every sent batch."""
    count = arrays["action"].shape[0]
    both = q(np.concatenate([arrays["obs"], arrays["next_obs"]]))
    values, next_values = both[:count], both[count:]
    chosen = values[np.arange(count), arrays["action"]]
    target = arrays["reward"] + arrays["discount"] * next_values.max(axis=1)
    return np.abs(target - chosen).astype(np.float32)


def run_actor(steps: int) -> tuple[Actor, list[dict[str, np.ndarray]]]:
    overrides = [
        "env.num_envs=4",
        "env.max_episode_steps=12",  # truncations as well as terminations
        "learner.n_step=3",
        "learner.gamma=0.9",
        "actor.send_size=16",
        "network.hidden=[32, 32]",
    ]
    actor = Actor(StillLink(), load_config("cartpole", overrides), actor_index=0)
    actor.push.close(linger=0)
    push = actor.push = RecordingPush()
    stop = threading.Event()
    step = actor.env.step
    taken = 0

    def counted_step(actions):
        nonlocal taken
        taken += 1
        if taken == steps:
            stop.set()
        return step(actions)

    actor.env.step = counted_step
    try:
        actor.run(stop)
    finally:
        actor.close()
    messages = [decode(frames) for frames in push.messages]
    batches = [m.arrays for m in messages if m.kind == "transitions"]
    assert messages[-1].kind == "stream_end"
    return actor, batches


def test_priorities_from_acting_passes_match_a_second_pass() -> None:
    actor, batches = run_actor(steps=400)
    assert all(b["action"].shape[0] == 16 for b in batches[:-1]) and 0 < batches[-1]["action"].shape[0] <= 16
    arrays = {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}
    assert arrays["action"].shape[0] == actor.transitions_sent > 1000
    expected = explicit_priorities(actor.q, arrays)
    # Not bit for bit: the same rows go through the network in batches of another size.
    np.testing.assert_allclose(arrays["priority"], expected, rtol=1e-5, atol=1e-5)
    # Every kind of bootstrap was exercised: mid-episode, terminated (discount 0) and truncated
    # (discount > 0 from a final observation no acting pass saw: its own forward pass).
    discount = arrays["discount"]
    assert np.any(discount == 0.0)
    full = np.float32(0.9**3)
    assert np.any(discount == full)
    assert np.any((discount > 0.0) & (discount != full))  # k < n without termination: truncated
    assert np.all(arrays["version"] == 7)


def rows(first: int, count: int) -> NStepTransitions:
    ids = np.arange(first, first + count)
    return NStepTransitions(
        obs=np.stack([ids, -ids], axis=1).astype(np.float32),
        action=ids,
        reward=ids.astype(np.float32),
        discount=np.full(count, 0.5, np.float32),
        next_obs=np.stack([ids + 1, -ids], axis=1).astype(np.float32),
        env_index=ids % 4,
        action_value=ids.astype(np.float32),
        ended=np.zeros(count, bool),
    )


def test_outbox_fills_whole_messages_in_arrival_order() -> None:
    outbox = Outbox(size=5)
    sent = []
    for version, (first, count) in enumerate([(0, 3), (3, 3), (6, 8), (14, 0), (14, 2)]):
        for message in outbox.add(rows(first, count), version, np.arange(first, first + count) / 10):
            sent.append(message)
    assert [m["action"].tolist() for m in sent] == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 12, 13, 14]]
    assert outbox.count == 1
    last = outbox.take()
    assert last["action"].tolist() == [15] and outbox.count == 0
    assert sent[1]["version"].tolist() == [1, 2, 2, 2, 2]
    assert sent[1]["obs"][:, 1].tolist() == [-5, -6, -7, -8, -9]
    assert sent[1]["next_obs"][:, 0].tolist() == [6, 7, 8, 9, 10]
    np.testing.assert_allclose(sent[2]["priority"], np.arange(10, 15) / 10)
    assert {k: v.dtype for k, v in last.items()} == {
        "obs": np.float32,
        "action": np.int64,
        "reward": np.float32,
        "discount": np.float32,
        "next_obs": np.float32,
        "version": np.int64,
        "priority": np.float32,
    }


def test_a_dropped_report_keeps_its_episodes_for_the_next_one() -> None:
    """Reports are sent without blocking; episodes of one that could not leave go with the next, and a
    report carries at most the newest MAX_EPISODES_PER_REPORT (the learner refuses more)."""
    from actor.actor import Actor
    from common.wire import MAX_EPISODES_PER_REPORT

    class Link:
        version = 3

        def __init__(self) -> None:
            self.outcomes = [False, True, True]
            self.sent: list[dict] = []

        def send(self, kind, meta, arrays):
            ok = self.outcomes.pop(0)
            if ok:
                self.sent.append(arrays)
            return ok

    actor = Actor.__new__(Actor)  # only the reporting state: no env, no sockets
    actor.link, actor.index, actor.stream, actor.epsilon = Link(), 0, "s", 0.1
    actor.env_steps = actor.transitions_sent = actor.transitions_dropped = 0
    actor.returns, actor.lengths = [1.0, 2.0], [10, 20]
    actor._report(0.0)  # dropped
    actor.returns.append(3.0)
    actor.lengths.append(30)
    actor._report(0.0)
    assert actor.link.sent[0]["episode_returns"].tolist() == [1.0, 2.0, 3.0]
    assert actor.link.sent[0]["episode_lengths"].tolist() == [10, 20, 30]
    assert actor.returns == [] and actor.lengths == []
    actor.returns = [float(i) for i in range(MAX_EPISODES_PER_REPORT + 5)]
    actor.lengths = list(range(MAX_EPISODES_PER_REPORT + 5))
    actor._report(0.0)
    newest = actor.link.sent[1]
    assert len(newest["episode_returns"]) == MAX_EPISODES_PER_REPORT == len(newest["episode_lengths"])
    assert newest["episode_returns"][-1] == MAX_EPISODES_PER_REPORT + 4


def test_an_actor_over_slots_explores_each_env_at_its_own_rung(monkeypatch) -> None:
    """With actor.epsilon_over = "slots", env j of actor 1 (of 2, 4 envs each) acts at the Ape-X epsilon of
    global slot 4 + j of 8: the share of its actions that are not the greedy one is epsilon / 2 (CartPole
    has 2 actions), and the actor reports its slots' mean."""
    import actor.actor as actor_module
    from common.epsilon_ladder import slot_epsilons

    overrides = ["env.num_envs=4", "actor.num_actors=2", "actor.epsilon_over=slots", "actor.epsilon_alpha=2"]
    actor = Actor(StillLink(), load_config("cartpole", [*overrides, "network.hidden=[16]"]), actor_index=1)
    actor.push.close(linger=0)
    actor.push = RecordingPush()
    reports: list[dict] = []
    actor.link.send = lambda kind, meta, arrays: reports.append(meta) or True
    off_greedy, steps = np.zeros(4), 4000
    choose = actor_module.choose_actions
    stop = threading.Event()

    def counted(q, epsilon, rng):  # the real choice, counted
        nonlocal steps
        actions = choose(q, epsilon, rng)
        off_greedy[:] += actions != q.argmax(axis=1)
        steps -= 1
        if steps == 0:
            stop.set()
        return actions

    monkeypatch.setattr(actor_module, "choose_actions", counted)
    try:
        actor.run(stop)
    finally:
        actor.close()
    expected = np.asarray(slot_epsilons(1, 4, 2, 0.4, 2.0, "slots"))  # 0.4 ** (1 + 2 g / 7), g = 4..7
    assert expected == pytest.approx([0.4 ** (1 + 2 * g / 7) for g in range(4, 8)])
    share = off_greedy / 4000
    assert np.all(np.abs(share - expected / 2) < 4 * np.sqrt(expected / 2 / 4000)), (share, expected / 2)
    assert reports[-1]["epsilon"] == pytest.approx(expected.mean())


class OvertakenLink(StillLink):
    """Weights used in place that the writer overtakes during the next `times` passes."""

    def __init__(self, times: int) -> None:
        super().__init__()
        self.times = times
        self.takes: list[bool] = []  # each newest_weights call: in place (attach given) or a copy

    def newest_weights(self, load=None, attach=None):
        self.takes.append(attach is not None)
        return None

    def weights_whole(self) -> bool:
        if self.times:
            self.times -= 1
            return False
        return True


class CountingNetwork:
    def __init__(self, inner) -> None:
        self.inner, self.passes = inner, 0
        self.attach = self.load = inner.load

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        self.passes += 1
        return self.inner(obs)


@pytest.mark.parametrize(("overtaken", "takes"), [(0, []), (1, [True]), (3, [True, True, False])])
def test_a_pass_the_writer_overtook_is_done_again_with_newer_weights(overtaken: int, takes: list[bool]) -> None:
    link = OvertakenLink(0)
    actor = Actor(link, load_config("cartpole", ["network.hidden=[16]"]), actor_index=0)
    try:
        actor.q = network = CountingNetwork(actor.q)
        link.times = overtaken
        obs = np.zeros((actor.config.env.num_envs, 4), np.float32)
        np.testing.assert_array_equal(actor._values(obs), network.inner(obs))
        assert network.passes == overtaken + 1 and link.takes == takes  # the last retry takes a private copy
    finally:
        actor.close()
