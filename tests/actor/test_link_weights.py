"""How an actor's link follows the learner's weights: shared memory on the learner's host, else the broadcast.

Real sockets and a real ControlServer; the actor side is the real LearnerLink.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest
import zmq

from actor.link import LearnerLink
from common.config import load_config
from common.shared_weights import available
from common.sockets import bind, free_port_base, make_socket
from common.wire import Encoder
from learner.control import ControlServer

pytestmark = pytest.mark.skipif(not available(), reason="/dev/shm is not a writable directory here")


def _config(*overrides: str):
    config = load_config("cartpole", list(overrides))
    return dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))


def _weights(value: float) -> dict[str, np.ndarray]:
    return {"w": np.full((64, 32), value, np.float32), "b": np.full(32, value, np.float32)}


def _newest(link: LearnerLink, version: int, timeout: float = 10.0):
    """Drain until `version` (or newer) has been taken; returns the message that carried it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        msg = link.newest_weights()
        if msg is not None and msg.meta["version"] >= version:
            return msg
        time.sleep(0.005)
    raise AssertionError(f"v{version} never arrived (link at v{link.version})")


def _link(config, ctx: zmq.Context, **kwargs) -> LearnerLink:
    link = LearnerLink("127.0.0.1", config.net.learner_port, role="actor", ctx=ctx, **kwargs)
    welcome = link.join(0, threading.Event(), timeout_s=10)
    link.subscribe(welcome.config)
    return link


def _publish_until(control: ControlServer, link: LearnerLink, first: int, value: float = 1.0):
    """Publish new versions until one arrives (a SUB connects a little after it is created)."""
    version = first
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        control.set_weights(version, _weights(value + version))
        time.sleep(0.05)
        msg = link.newest_weights()
        if msg is not None:
            return msg
        version += 1
    raise AssertionError("no weights reached the link")


@contextlib.contextmanager
def _learner_and_links(*overrides: str, links: tuple[bool, ...] = (True,)) -> Iterator[tuple]:
    """A real ControlServer and joined links (True: may use shared memory), all closed afterwards."""
    config = _config(*overrides)
    ctx = zmq.Context()
    control = ControlServer(config, ctx)
    control.start()
    joined = [_link(config, ctx, shared_memory=prefer) for prefer in links]
    try:
        yield (control, *joined)
    finally:
        for link in joined:
            link.close()
        control.close()
        ctx.destroy(linger=0)


def _publish_while(control: ControlServer, link: LearnerLink, condition, what: str) -> None:
    """Publish newer versions until `condition()` is false, draining the link between them."""
    deadline = time.monotonic() + 10
    while condition():
        assert time.monotonic() < deadline, what
        control.set_weights(link.version + 1, _weights(link.version + 1))
        time.sleep(0.02)
        link.newest_weights()


def test_a_local_actor_switches_to_shared_memory_and_stops_receiving_the_full_weights() -> None:
    with _learner_and_links() as (control, link):
        first = _publish_until(control, link, 1)
        assert link.shared is not None, "the notice never switched the link to shared memory"
        assert link.shared.path.startswith("/dev/shm/distdqn-weights-")
        path = link.shared.path
        by_broadcast = link.received["broadcast"]
        for version in range(first.meta["version"] + 1, first.meta["version"] + 6):
            control.set_weights(version, _weights(version))
            msg = _newest(link, version)
            assert msg.sender == "shared-memory"
            assert (msg.arrays["w"] == msg.meta["version"]).all()
        loaded: dict[str, np.ndarray] = {}
        control.set_weights(50, _weights(50))
        deadline = time.monotonic() + 10
        while (msg := link.newest_weights(lambda a: loaded.update((k, v.copy()) for k, v in a.items()))) is None:
            assert time.monotonic() < deadline, "v50 never arrived"
            time.sleep(0.005)
        assert msg.meta["version"] == 50 and msg.arrays == {}  # loaded straight from the file
        assert (loaded["w"] == 50).all() and (loaded["b"] == 50).all()
        time.sleep(0.2)  # anything still in flight from before the unsubscription has arrived by now
        link.newest_weights()
        settled = link.received["broadcast"]
        control.set_weights(100, _weights(100))
        _newest(link, 100)
        time.sleep(0.2)
        assert link.newest_weights() is None
        assert link.received["broadcast"] == settled, "full weights still reach a shared-memory actor"
        assert link.received["shared_memory"] >= 6 and settled - by_broadcast <= 2
    assert not os.path.exists(path), "the learner left its shared-memory file behind"


def test_the_broadcast_carries_everything_when_shared_memory_is_off_or_unwanted() -> None:
    for overrides, prefer in ((["net.shared_memory_weights=false"], True), ([], False)):
        with _learner_and_links(*overrides, links=(prefer,)) as (control, link):
            first = _publish_until(control, link, 1)
            for version in range(first.meta["version"] + 1, first.meta["version"] + 4):
                control.set_weights(version, _weights(version))
                assert _newest(link, version).sender.startswith("learner")
            assert link.shared is None and link.received["shared_memory"] == 0


def test_a_file_this_actor_cannot_open_leaves_it_on_the_broadcast() -> None:
    """What an actor on another machine sees: a notice naming a file it does not have."""
    config = _config()
    ctx = zmq.Context()
    pub = make_socket(ctx, zmq.PUB, hwm=4, heartbeats=False)
    bind(pub, "127.0.0.1", config.net.weights_port, "test broadcast")
    router = make_socket(ctx, zmq.ROUTER, hwm=16)
    bind(router, "127.0.0.1", config.net.learner_port, "test control")
    link = LearnerLink("127.0.0.1", config.net.learner_port, role="actor", ctx=ctx)
    link.learner_run_id = "e1e1"
    link.subscribe(config)
    encode = Encoder("learner")
    try:
        deadline, version = time.monotonic() + 10, 0
        while link.received["broadcast"] < 3 and time.monotonic() < deadline:
            version += 1
            meta = {"version": version, "run_id": "e1e1"}
            ref = {**meta, "path": f"/dev/shm/distdqn-weights-e1e1-{'a' * 16}", "token": "a" * 16}
            pub.send_multipart(encode("weights_ref", ref))
            pub.send_multipart(encode("weights", meta, _weights(version)))
            time.sleep(0.05)
            link.newest_weights()
        assert link.received["broadcast"] >= 3 and link.version == version
        assert link.shared is None and link.received["shared_memory"] == 0
    finally:
        link.close()
        pub.close(linger=0)
        router.close(linger=0)
        ctx.destroy(linger=0)


def test_a_restarted_learner_on_the_same_host_is_followed_to_its_new_file() -> None:
    config = _config()
    ctx, learner_ctx = zmq.Context(), zmq.Context()
    control = ControlServer(config, learner_ctx)
    control.start()
    link = _link(config, ctx)
    try:
        _publish_until(control, link, 50)
        assert link.shared is not None
        old_path = link.shared.path
        control.close()
        learner_ctx.term()  # its ports are free once its context is gone, as when a process exits
        learner_ctx = zmq.Context()
        control = ControlServer(config, learner_ctx)  # same ports, a new run id and file; versions start lower
        control.start()
        _publish_until(control, link, 1, value=1000)
        assert link.learner_run_id == control.run_id
        _publish_while(
            control,
            link,
            lambda: link.shared is None or link.shared.path == old_path,
            "the actor never took the restarted learner's file",
        )
        assert link.shared is not None
        assert link.shared.run_id == control.run_id
        assert not os.path.exists(old_path)
    finally:
        link.close()
        control.close()
        ctx.destroy(linger=0)
        learner_ctx.destroy(linger=0)


def test_actors_go_back_to_the_broadcast_when_the_learner_stops_writing_its_file() -> None:
    """A learner whose /dev/shm fills up turns sharing off; actors must not wait on a frozen file."""
    with _learner_and_links() as (control, link):
        _publish_until(control, link, 1)
        assert link.shared is not None
        first_path = link.shared.path
        control.set_shared_memory(False)
        _publish_while(
            control,
            link,
            lambda: link.received["broadcast"] == 0 or link.shared is not None,
            "the actor never went back to the broadcast",
        )
        assert not os.path.exists(first_path)
        version = link.version + 1
        control.set_weights(version, _weights(version))
        assert _newest(link, version).sender.startswith("learner")
        control.set_shared_memory(True)  # and back: a new file
        _publish_while(control, link, lambda: link.shared is None, "the actor never took the new file")
        assert link.shared is not None and link.shared.path != first_path
        version = link.version + 1
        control.set_weights(version, _weights(version))
        assert _newest(link, version).sender == "shared-memory"


def test_a_cnn_acts_from_the_shared_file_in_place_and_takes_the_newest_when_overtaken() -> None:
    """Nature CNN actors do not copy each version: their network uses the file's slot itself, and the
    link tells when the writer has begun to overwrite it (two versions on), so the actor takes another."""
    from common.config import NetworkConfig
    from common.networks import QNetwork, weights_to_numpy
    from common.policy_network import policy_network

    config = NetworkConfig(torso="nature_cnn", hidden=(32,))
    weights = [weights_to_numpy(QNetwork((4, 84, 84), 3, config)) for _ in range(4)]
    obs = np.random.default_rng(3).integers(0, 256, (2, 4, 84, 84), dtype=np.uint8)
    expected = []
    for arrays in weights:
        reference = policy_network((4, 84, 84), 3, config)
        reference.load(arrays)
        expected.append(reference(obs))
    policy = policy_network((4, 84, 84), 3, config)

    def publish_until(version: int, k: int, condition, what: str) -> int:
        deadline = time.monotonic() + 10
        while not condition():
            assert time.monotonic() < deadline, what
            version += 1
            control.set_weights(version, weights[k])
            time.sleep(0.02)
            link.newest_weights(policy.load, policy.attach)
        return version

    with _learner_and_links() as (control, link):
        version = publish_until(0, 1, lambda: link.shared is not None and policy.attached, "never in place")
        assert link.version == version and link.weights_whole()
        np.testing.assert_array_equal(policy(obs), expected[1])
        control.set_weights(version + 1, weights[2])  # into the other slot: still whole
        assert link.weights_whole()
        np.testing.assert_array_equal(policy(obs), expected[1])
        control.set_weights(version + 2, weights[3])  # over the slot the network acts from
        assert not link.weights_whole()
        np.testing.assert_array_equal(policy(obs), expected[3])  # it changed under the network: no copy
        link.newest_weights(policy.load, policy.attach)
        assert link.version == version + 2 and link.weights_whole() and policy.attached
        control.set_shared_memory(False)  # the file goes: the network keeps a copy of what it acts with
        before = link.received["broadcast"]
        version = publish_until(version + 2, 0, lambda: link.shared is None, "the link never left the file")
        assert not policy.attached and link.weights_whole()
        if link.received["broadcast"] == before:  # none by broadcast yet: it acts with its copy of the held one
            np.testing.assert_array_equal(policy(obs), expected[3])
        publish_until(version, 0, lambda: link.received["broadcast"] > before, "no broadcast after the file")
        np.testing.assert_array_equal(policy(obs), expected[0])  # loaded into its own parameters


def test_live_parameters_are_published_as_they_were_when_handed_over() -> None:
    """The learner hands over views of parameters it goes on training; both paths must carry the values
    of the moment of publication, not of the next optimizer step."""
    for overrides in ([], ["net.shared_memory_weights=false"]):
        with _learner_and_links(*overrides, links=(True, False)) as (control, local, remote):
            for link in (local, remote):
                _publish_until(control, link, 1)
            live = _weights(0)
            version = max(local.version, remote.version) + 1
            control.set_weights(version, live, live=True)
            for array in live.values():
                array += 1000  # the next optimizer step, right after the call returns
            for link in (local, remote):
                msg = _newest(link, version)
                assert (msg.arrays["w"] == 0).all() and (msg.arrays["b"] == 0).all(), msg.sender


def test_a_weights_ref_naming_another_users_file_is_refused_and_counted() -> None:
    """A squatter on a dead learner's port names its own valid weights file: the actor stays on the broadcast."""
    if os.geteuid() != 0:
        print("skipped: giving a file to another user needs root")
        pytest.skip("giving a file to another user needs root")
    from common.shared_weights import SharedWeightsWriter

    config = _config()
    ctx = zmq.Context()
    pub = make_socket(ctx, zmq.PUB, hwm=4, heartbeats=False)
    bind(pub, "127.0.0.1", config.net.weights_port, "test broadcast")
    planted = SharedWeightsWriter("e1e1", _weights(0))
    planted.write(10**6, _weights(666))
    os.chown(planted.path, 65534, 65534)
    os.chmod(planted.path, 0o644)
    link = LearnerLink("127.0.0.1", config.net.learner_port, role="actor", ctx=ctx)
    link.learner_run_id = "e1e1"
    link.subscribe(config)
    encode = Encoder("learner")
    try:
        deadline, version = time.monotonic() + 10, 0
        while link.received["broadcast"] < 3 and time.monotonic() < deadline:
            version += 1
            meta = {"version": version, "run_id": "e1e1"}
            pub.send_multipart(encode("weights_ref", {**meta, "path": planted.path, "token": planted.token}))
            pub.send_multipart(encode("weights", meta, _weights(version)))
            time.sleep(0.05)
            link.newest_weights()
        assert link.received["broadcast"] >= 3 and link.version == version
        assert link.shared is None and link.received["shared_memory"] == 0
        assert link.shared_refused == 1  # one refusal per token, not one per notice
    finally:
        link.close()
        planted.close()
        pub.close(linger=0)
        ctx.destroy(linger=0)
