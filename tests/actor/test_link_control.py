"""An actor's link and the learner's control server, both real, over real sockets: joining, retries, roles."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest
import zmq

from actor.link import LearnerLink
from common.config import load_config
from common.epsilon_ladder import apex_epsilon
from common.sockets import free_port_base
from learner.control import ControlServer


def _config(*overrides: str):
    config = load_config("cartpole", list(overrides))
    return dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))


def test_a_retried_hello_gets_the_same_index_and_the_learner_chooses_the_epsilon() -> None:
    config = _config("actor.num_actors=3", "actor.epsilon_over=actors")  # one epsilon per actor, in welcome
    ctx = zmq.Context()
    control = ControlServer(config, ctx)
    control.start()
    links = [LearnerLink("127.0.0.1", config.net.learner_port, role="actor", ctx=ctx) for _ in range(2)]
    try:
        stop = threading.Event()
        first = links[0].join(-1, stop, timeout_s=10)
        again = links[0].join(-1, stop, timeout_s=10)  # the same process saying hello again
        other = links[1].join(-1, stop, timeout_s=10)
        assert (first.actor_index, again.actor_index, other.actor_index) == (0, 0, 1)
        assert first.epsilon == pytest.approx(apex_epsilon(0, 3)) and other.epsilon == pytest.approx(0.4**4.5)
        assert len(control.registry.records) == 2
    finally:
        for link in links:
            link.close()
        control.close()
        ctx.destroy(linger=0)


def test_an_evaluator_says_hello_again_to_a_restarted_learner_and_its_results_then_count() -> None:
    config = _config()
    ctx, learner_ctx = zmq.Context(), zmq.Context()
    control = ControlServer(config, learner_ctx)
    control.start()
    link = LearnerLink("127.0.0.1", config.net.learner_port, role="evaluator", ctx=ctx)
    try:
        welcome = link.join(0, threading.Event(), timeout_s=10)
        link.subscribe(welcome.config)
        control.close()
        learner_ctx.term()
        learner_ctx = zmq.Context()
        control = ControlServer(config, learner_ctx)  # never heard this evaluator's hello
        control.start()
        result = {"returns": np.full(3, 9.0, np.float32), "lengths": np.full(3, 9, np.int64)}
        deadline = time.monotonic() + 20
        while not control.eval_results:
            assert time.monotonic() < deadline, f"no result counted: {dict(control.rejected)}"
            link.send("eval_result", {"weight_version": 0}, result)
            link.newest_weights()
            time.sleep(0.2)
        assert control.rejected["not_evaluator"] >= 1  # the ones before its hello did not count
    finally:
        link.close()
        control.close()
        ctx.destroy(linger=0)
        learner_ctx.destroy(linger=0)
