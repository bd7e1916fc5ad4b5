"""An actor's link behind a weight relay whose notices cannot be used goes to the learner at once.

Real sockets: a real ControlServer as the learner, and a relay PUB on an ipc socket that the test
controls, announcing a weights file that is not one (a refusal the link must not wait out).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from actor.link import LearnerLink
from common.shared_weights import available
from common.sockets import make_socket
from common.wire import Encoder
from learner.control import ControlServer
from tests.actor.test_link_weights import _config

pytestmark = pytest.mark.skipif(not available(), reason="/dev/shm is not a writable directory here")


def test_a_relay_whose_file_is_refused_is_left_for_the_learners_broadcast(tmp_path: Path) -> None:
    config = _config()
    ctx = zmq.Context()
    control = ControlServer(config, ctx)
    control.start()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    relay = make_socket(ctx, zmq.PUB, hwm=16, heartbeats=False)
    relay.bind(f"ipc://{private / 'relay.sock'}")
    link = LearnerLink("127.0.0.1", config.net.learner_port, role="actor", ctx=ctx, relay=str(private / "relay.sock"))
    try:
        link.subscribe(link.join(0, threading.Event(), timeout_s=10).config)
        assert link.relay is not None and link.relay.serving
        encode = Encoder("fake-relay")
        token = "0123456789abcdef"
        bogus = {"version": 1, "run_id": control.run_id, "path": f"/dev/shm/distdqn-weights-aa-{token}", "token": token}
        deadline = time.monotonic() + 10
        while link.relay.serving:
            assert time.monotonic() < deadline, "the link kept following a relay whose file it refused"
            relay.send_multipart(encode("weights_ref", bogus))
            time.sleep(0.05)
            link.newest_weights()
        assert link.shared_refused >= 1
        version, deadline = 2, time.monotonic() + 10
        while link.version < 2:  # now the learner's own versions reach it
            assert time.monotonic() < deadline, "no weights from the learner after leaving the relay"
            control.set_weights(version, {"w": np.full((4, 2), 0.5, np.float32)})
            version += 1
            time.sleep(0.05)
            link.newest_weights()
        assert link.received["relay"] == 0
    finally:
        link.close()
        relay.close(linger=0)
        control.close()
        ctx.destroy(linger=0)


def test_a_relay_the_learner_confirms_is_not_taken_for_stale(tmp_path: Path, monkeypatch) -> None:
    """While the learner publishes nothing new, a relay whose `confirmed` grows is still followed; one
    that repeats the same notice unconfirmed is left once STALE_S has passed."""
    from actor import relay_watch
    from common.wire import Message

    monkeypatch.setattr(relay_watch, "STALE_S", 0.3)
    ctx = zmq.Context()
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    relay = make_socket(ctx, zmq.PUB, hwm=16, heartbeats=False)
    relay.bind(f"ipc://{private / 'relay.sock'}")
    watch = relay_watch.RelayWatch(ctx, str(private / "relay.sock"), 1 << 20)

    def notice(confirmed: int) -> Message:
        meta = {"version": 3, "run_id": "ab12", "path": "/dev/shm/x", "token": "0" * 16, "confirmed": confirmed}
        return Message(kind="weights_ref", sender="relay", seq=0, meta=meta, arrays={})

    try:
        for confirmed in range(6):  # 0.6 s, twice STALE_S, with a confirmation every 0.1 s
            watch.note(notice(confirmed))
            time.sleep(0.1)
            assert watch.failing() is None
        for _ in range(5):  # the same notice again, unconfirmed
            watch.note(notice(5))
            time.sleep(0.1)
        assert watch.failing() is not None and "no new or confirmed version" in watch.failing()
    finally:
        watch.close()
        relay.close(linger=0)
        ctx.destroy(linger=0)
