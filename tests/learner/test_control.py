"""The learner's control server over real sockets: garbage is refused and counted, service goes on."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator

import msgpack
import numpy as np
import pytest
import zmq

from common.config import load_config
from common.epsilon_ladder import apex_epsilon
from common.sockets import free_port_base
from common.wire import Encoder, decode, encode
from learner.control import ControlServer
from learner.weight_replies import MAX_PENDING
from tests.helpers import wait_for


def test_bad_control_messages_are_refused_and_counted_then_service_goes_on() -> None:
    config = load_config("cartpole", ["net.max_message_mb=1"])
    config = dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))
    ctx = zmq.Context()
    control = ControlServer(config, ctx)
    control.set_weights(7, {"w": np.ones(3, np.float32)})
    control.start()
    dealer = ctx.socket(zmq.DEALER)
    dealer.connect(f"tcp://127.0.0.1:{config.net.learner_port}")
    try:
        dealer.send_multipart([b"\xc1 not msgpack"])
        dealer.send_multipart(encode("transitions", {"actor_index": 0}, {}, seq=1))  # not a control kind
        bad_rank = {"episode_returns": np.zeros((2, 2), np.float32), "episode_lengths": np.zeros(2, np.int64)}
        meta = {"actor_index": 0, "env_steps": 1, "transitions_sent": 0, "weight_version": 0}
        dealer.send_multipart(encode("actor_stats", meta, bad_rank, seq=2))
        header = msgpack.unpackb(encode("get_weights", seq=3)[0])
        header["v"] = 5
        dealer.send_multipart([msgpack.packb(header)])
        # The wrong version and the wrong kind are answered with a clear error.
        replies = []
        for _ in range(2):
            assert dealer.poll(5000)
            replies.append(decode(dealer.recv_multipart(), expect=("error",)).meta["reason"])
        assert sorted(replies) == ["unexpected_kind", "wrong_version"]
        # An oversized message never reaches a decoder: ZeroMQ drops it and the peer.
        big = ctx.socket(zmq.DEALER)
        big.connect(f"tcp://127.0.0.1:{config.net.learner_port}")
        big.send_multipart([b"x" * ((1 << 20) + 1)])
        wait_for(lambda: sum(control.rejected.values()) == 4)
        assert control.rejected == {"bad_header": 1, "unexpected_kind": 1, "bad_shape": 1, "wrong_version": 1}

        # Still serving: a hello is welcomed and the weights come back.
        enc = Encoder("test-actor")
        dealer.send_multipart(enc("hello", {"role": "actor", "actor_index": 3}))
        assert dealer.poll(5000)
        welcome = decode(dealer.recv_multipart(), expect=("welcome",))
        assert welcome.meta["actor_index"] == 3
        dealer.send_multipart(enc("get_weights"))
        assert dealer.poll(5000)
        weights = decode(dealer.recv_multipart(), expect=("weights",))
        assert weights.meta["version"] == 7 and weights.meta["run_id"] == welcome.meta["run_id"]
        big.close(linger=0)
    finally:
        dealer.close(linger=0)
        control.close()
        ctx.destroy(linger=0)


# ---- a peer holding a valid connection can waste its own share, and no more ----------------------
STATS_META = {"transitions_sent": 0, "weight_version": 0}


def _episodes(count: int) -> dict[str, np.ndarray]:
    return {"episode_returns": np.ones(count, np.float32), "episode_lengths": np.ones(count, np.int64)}


class _Peer:
    """One DEALER connection to the control server, speaking the protocol by hand."""

    def __init__(self, ctx: zmq.Context, port: int, name: str = "peer", rcvhwm: int = 1000) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, rcvhwm)
        self.sock.connect(f"tcp://127.0.0.1:{port}")
        self.enc = Encoder(name)

    def send(self, kind: str, meta: dict | None = None, arrays: dict | None = None) -> None:
        self.sock.send_multipart(self.enc(kind, meta, arrays))

    def reply(self, timeout_s: float = 5.0):
        assert self.sock.poll(int(timeout_s * 1000)), "no reply"
        return decode(self.sock.recv_multipart(), expect=("welcome", "weights", "error"))

    def hello(self, index: int = -1, role: str = "actor", **meta) -> dict:
        self.send("hello", {"role": role, "actor_index": index, **meta})
        msg = self.reply()
        assert msg.kind == "welcome", msg.meta
        return msg.meta

    def stats(self, index: int, steps: int, episodes: int = 0, **meta) -> None:
        self.send("actor_stats", {"actor_index": index, "env_steps": steps, **STATS_META, **meta}, _episodes(episodes))

    def close(self) -> None:
        self.sock.close(linger=0)


@contextlib.contextmanager
def _serve(*overrides: str) -> Iterator[tuple[ControlServer, zmq.Context, int]]:
    """A running ControlServer and a context for its peers, all closed afterwards."""
    config = load_config("cartpole", list(overrides))
    config = dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))
    ctx = zmq.Context()
    control = ControlServer(config, ctx)
    control.set_weights(1, {"w": np.ones(1 << 16, np.float32)})  # 256 KiB: what a reply costs matters
    control.start()
    try:
        yield control, ctx, config.net.learner_port
    finally:
        control.close()
        ctx.destroy(linger=0)


@pytest.fixture
def served() -> Iterator[tuple[ControlServer, zmq.Context, int]]:
    with _serve() as running:
        yield running


def test_only_an_evaluator_reports_evaluations(served) -> None:
    control, ctx, port = served
    stranger, actor, evaluator = (_Peer(ctx, port, name) for name in ("stranger", "actor", "evaluator"))
    actor.hello(0)
    evaluator.hello(0, role="evaluator")
    result = {"returns": np.full(10, 500.0, np.float32), "lengths": np.full(10, 500, np.int64)}
    for forger in (stranger, actor):
        for _ in range(3):
            forger.send("eval_result", {"weight_version": 1}, result)
    assert stranger.reply().meta["reason"] == "hello_first"  # a restarted learner asks for the hello again
    wait_for(lambda: control.rejected["not_evaluator"] == 6)
    evaluator.send("eval_result", {"weight_version": 1}, result)
    wait_for(lambda: len(control.eval_results) == 1)
    assert control.take_statistics()[1][0][0] == 1
    evaluator.stats(0, 10**6)  # nor does an evaluator count steps
    wait_for(lambda: control.rejected["not_actor"] == 1)
    assert control.env_steps == 0
    # A connection cannot change its role, nor name one no peer may take.
    actor.send("hello", {"role": "evaluator", "actor_index": 0})
    stranger.send("hello", {"role": "learner", "actor_index": 0})
    assert actor.reply().kind == "error" and stranger.reply().kind == "error"
    wait_for(lambda: control.rejected["role_changed"] == 1 and control.rejected["bad_role"] == 1)


def test_env_steps_are_monotone_and_bounded_per_report(served) -> None:
    control, ctx, port = served
    actor = _Peer(ctx, port)
    index = actor.hello()["actor_index"]
    actor.stats(index, 1000)
    wait_for(lambda: control.env_steps == 1000)
    begun = time.monotonic()
    actor.stats(index, 2**39)
    actor.stats(index, 500)  # below the last report: refused, not subtracted
    wait_for(lambda: control.rejected["steps_implausible"] == 1 and control.rejected["counter_backwards"] == 1)
    burst = control.registry.burst
    assert 1000 < control.env_steps <= 1000 + burst
    # No more than the rate allows from then on, however often and however far it reports.
    for i in range(1, 51):
        actor.stats(index, 2**39 + i * 10**9)  # the wire allows up to 2^40
    wait_for(lambda: control.rejected["steps_implausible"] == 51)
    allowed = (time.monotonic() - begun) * control.registry.steps_per_s
    assert control.env_steps <= 1000 + burst + allowed < 10**7


def test_hellos_naming_live_actors_reset_nothing_and_retries_get_the_same_index(served) -> None:
    control, ctx, port = served
    actor = _Peer(ctx, port)
    first = actor.hello(-1, instance="a" * 16)
    index = first["actor_index"]
    # Hellos queued while the learner was away arrive together: one actor, one index.
    for _ in range(5):
        actor.send("hello", {"role": "actor", "actor_index": -1, "instance": "a" * 16})
    assert {actor.reply().meta["actor_index"] for _ in range(5)} == {index}
    assert len(control.registry.records) == 1
    actor.stats(index, 10_000)
    wait_for(lambda: control.env_steps == 10_000)
    others = [_Peer(ctx, port, f"other-{i}") for i in range(10)]
    for i, other in enumerate(others):
        other.hello(index, instance=f"other-{i}")
    actor.stats(index, 11_000)
    wait_for(lambda: control.registry.records[("instance", "a" * 16)].env_steps == 11_000)
    assert control.env_steps == 11_000
    # Nor can another connection report for it: one it never heard of counts from its first report on.
    stranger = _Peer(ctx, port, "stranger")
    stranger.stats(index, 50_000)
    wait_for(lambda: len(control.registry.records) == 12)
    assert control.env_steps == 11_000
    assert control.registry.records[("instance", "a" * 16)].env_steps == 11_000


def test_a_hello_flood_makes_a_bounded_number_of_records_and_writes_no_forged_log_lines(served, caplog) -> None:
    control, ctx, port = served
    caplog.set_level(logging.INFO, logger="learner")
    forged_host = "x\nSOLVED: solved after 1.0 s\n" + "y" * 200  # the wire caps strings at 256
    one = _Peer(ctx, port)
    for i in range(300):
        one.send("hello", {"role": "actor", "actor_index": -1, "instance": f"i{i}", "host": forged_host})
    peers = [_Peer(ctx, port, f"p{i}") for i in range(100)]
    for peer in peers:
        peer.send("hello", {"role": "actor", "actor_index": -1, "host": forged_host})
    limit = control.registry.max_records
    wait_for(lambda: sum(control.rejected.values()) >= 299 + 100 - (limit - 1), timeout=20)
    assert len(control.registry.records) <= limit
    assert control.rejected["one_actor_per_connection"] == 299
    assert control.rejected["too_many_actors"] == 100 - (limit - 1)
    text = caplog.text
    assert not any(line.startswith("SOLVED") for line in text.splitlines())
    assert len(text) < 100_000, f"{len(text)} characters of log from one flood"
    # Service goes on for honest actors once the flood's records have gone quiet.
    for peer in [one, *peers]:
        peer.close()


def test_get_weights_is_answered_at_a_bounded_rate_and_never_queued_for_peers_that_do_not_read(served) -> None:
    control, ctx, port = served
    greedy = _Peer(ctx, port)
    for _ in range(200):
        greedy.send("get_weights")
    replies = 0
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if greedy.sock.poll(100):
            greedy.sock.recv_multipart()
            replies += 1
    assert 1 <= replies <= 8, f"{replies} replies of 256 KiB to 200 requests in 3 s"
    refused = control.rejected
    assert refused["weights_rate_limited"] + refused["weights_unread"] == 200 - replies
    # Peers that never read hold one reply each at most, and only a few wait in all, whatever the weights weigh.
    silent = [_Peer(ctx, port, f"silent-{i}", rcvhwm=1) for i in range(12)]
    most_pending = 0
    for version in range(2, 8):
        control.set_weights(version, {"w": np.full(1 << 21, version, np.float32)})  # 8 MiB, a Nature CNN's size
        for _ in range(3):
            for peer in silent:
                peer.send("get_weights")
            time.sleep(0.25)
            most_pending = max(most_pending, len([t for t in control._weight_replies._pending if not t.done]))
    assert most_pending <= MAX_PENDING
    wait_for(lambda: control.rejected["weights_unread"] + control.rejected["weights_busy"] > 0)
    for peer in [greedy, *silent]:
        peer.close()


def test_actor_stats_are_bounded_in_size_and_episodes(served) -> None:
    control, ctx, port = served
    actor = _Peer(ctx, port)
    index = actor.hello()["actor_index"]
    actor.stats(index, 10, episodes=1100)  # 13 KB: within the size limit of actor_stats, but no actor finishes so many
    wait_for(lambda: control.rejected["too_many_episodes"] == 1)
    big = _Peer(ctx, port, "big")
    big.stats(index, 10, episodes=200_000)  # 2.4 MB: never reaches a decoder
    actor.stats(index, 20, episodes=3)
    wait_for(lambda: control.env_steps == 20)
    assert control.take_statistics()[0] == [1.0, 1.0, 1.0]
    big.close()


def test_one_message_that_breaks_a_handler_is_counted_and_the_thread_keeps_serving(served, monkeypatch) -> None:
    control, ctx, port = served

    def broken(*args) -> None:
        raise RuntimeError("a bug one message hits")

    monkeypatch.setitem(control._handlers, "actor_stats", broken)  # the dispatch table holds bound methods
    actor = _Peer(ctx, port)
    index = actor.hello()["actor_index"]
    for _ in range(3):
        actor.stats(index, 10)
    wait_for(lambda: control.rejected["handler_error"] == 3)
    assert control.is_alive()
    assert actor.hello()["actor_index"] == index
    actor.send("get_weights")
    assert actor.reply().kind == "weights"


# ---- exploration of joiners ----------------------------------------------------------------------
def test_joiners_fill_the_population_first_and_are_told_their_epsilon() -> None:
    with _serve("actor.num_actors=3", "actor.epsilon_over=actors") as (_, ctx, port):
        launched = _Peer(ctx, port, "launched").hello(1)  # a launched actor with its index
        assert launched["epsilon"] == pytest.approx(apex_epsilon(1, 3))
        welcomes = [_Peer(ctx, port, f"a{i}").hello(-1) for i in range(4)]
        assert [w["actor_index"] for w in welcomes] == [0, 2, 3, 4]
        for welcome in welcomes:  # beyond N: the ladder again, from its most exploring rung
            assert welcome["epsilon"] == pytest.approx(apex_epsilon(welcome["actor_index"] % 3, 3))
        assert welcomes[1]["epsilon"] == pytest.approx(0.4**8) and welcomes[2]["epsilon"] == pytest.approx(0.4)
        assert "epsilon" not in _Peer(ctx, port, "e").hello(0, role="evaluator")


def test_over_slots_the_welcome_leaves_the_epsilons_to_the_actors_rule() -> None:
    """An actor's env slots explore at different rates then: one `epsilon` cannot say them, so none is sent
    (docs/protocol.md, "Acting": the actor computes them from the config it is sent)."""
    with _serve("actor.num_actors=2", "actor.epsilon_over=slots") as (_, ctx, port):
        welcomes = [_Peer(ctx, port, f"a{i}").hello(-1) for i in range(3)]
        assert [w["actor_index"] for w in welcomes] == [0, 1, 2]
        assert all("epsilon" not in w for w in welcomes)
        assert all(w["config"]["actor"]["epsilon_over"] == "slots" for w in welcomes)


def test_a_population_of_one_explores_at_the_base_epsilon() -> None:
    with _serve("actor.num_actors=1", "actor.epsilon_over=actors") as (_, ctx, port):
        for i in range(3):
            assert _Peer(ctx, port, f"a{i}").hello(-1)["epsilon"] == pytest.approx(0.4)
