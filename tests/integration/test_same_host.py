"""Another user on the same machine gets nothing from a run started with run keys, and roles are separate.

The servers are the real ones (control and weights of the learner, replay's ingest and sampling),
started as the launcher starts them: a `common.keys run` directory named by DISTDQN_RUN_KEYS and no
net.curve_* settings. The other user is a real process under uid 65534 (needs root to switch; skipped
with the reason otherwise). Role tests use the run's own actor and evaluator keys, and a flat
allowlist directory as before roles existed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zmq

from common.config import RunConfig, load_config
from common.envs import EnvSpec
from common.key_files import generate_keypair
from common.run_keys import ENV, make_run_keys
from common.security import ClientSecurity, secure_client
from common.sockets import free_port_base, make_socket
from common.wire import Encoder, decode
from learner.control import ControlServer
from replay.server import ReplayServer
from tests.helpers import wait_for
from tests.integration import other_user_client
from tests.integration.curve_client import transitions

REPO = Path(__file__).resolve().parents[2]
INTRUDER = Path(__file__).resolve().parent / "other_user_client.py"
SPEC = EnvSpec((4,), np.dtype(np.float32), 2)
NOBODY = 65534
WAIT_S = 10.0


def _as_nobody(work) -> dict:
    """Run `work()` (returning a JSON-able dict) in a forked child that dropped to uid 65534 first.

    A fork, not a new interpreter: the interpreter may sit where that uid cannot read it."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            with os.fdopen(write_end, "w") as out:
                out.write(json.dumps(work()))
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as got:
        text = got.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0 and text, "the other user's process failed"
    return json.loads(text)


RESULT = {"returns": np.full(3, 10.0, np.float32), "lengths": np.full(3, 10, np.int64)}


@contextlib.contextmanager
def _servers(config: RunConfig) -> Iterator[tuple[ControlServer, ReplayServer]]:
    ctx = zmq.Context()
    control = ControlServer(config, ctx)
    control.set_weights(1, {"w": np.ones(16, np.float32)})
    control.start()
    replay = ReplayServer(config, SPEC)
    stop = threading.Event()
    thread = threading.Thread(target=replay.run, args=(stop,), kwargs={"log_interval_s": 60}, daemon=True)
    thread.start()
    try:
        yield control, replay
    finally:
        stop.set()
        thread.join(5)
        replay.close()
        control.close()
        ctx.destroy(linger=0)


def _config(*overrides: str) -> RunConfig:
    config = load_config(
        "cartpole", ["learner.batch_size=8", "replay.min_size=8", "replay.samples_per_insert=0", *overrides]
    )
    return dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))


@pytest.fixture
def run_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    keys = make_run_keys(tmp_path / "run" / "keys")
    monkeypatch.setenv(ENV, str(keys))
    return keys


class _Client:
    """One role's sockets with that role's run key: control DEALER, ingest PUSH, sampling DEALER."""

    def __init__(self, ctx: zmq.Context, config: RunConfig, curve: ClientSecurity) -> None:
        self.encode = Encoder("test-client")
        self.socks = {}
        for name, kind, port in (
            ("control", zmq.DEALER, config.net.learner_port),
            ("ingest", zmq.PUSH, config.net.ingest_port),
            ("sample", zmq.DEALER, config.net.sample_port),
        ):
            sock = make_socket(ctx, kind, linger_ms=0)
            secure_client(sock, curve)
            sock.connect(f"tcp://127.0.0.1:{port}")
            self.socks[name] = sock

    def send(self, name: str, kind: str, meta: dict | None = None, arrays: dict | None = None) -> None:
        self.socks[name].send_multipart(self.encode(kind, meta, arrays))

    def reply(self, name: str, timeout_s: float = 10.0):
        assert self.socks[name].poll(int(timeout_s * 1000)), f"no reply on {name}"
        return decode(self.socks[name].recv_multipart())


def test_another_local_user_gets_nothing_from_any_port(run_keys: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the other user's process as uid 65534")
    config = _config()
    with _servers(config) as (control, replay):
        got = _as_nobody(lambda: other_user_client.attempt_all(config.net.learner_port, str(run_keys), 2000))
        assert got["uid"] == NOBODY
        assert got["keys_listed"] is None  # the run's keys are out of its reach
        for mode in ("plain", "curve"):
            got[mode].pop("queued_push")  # what arrived is the server's to say: nothing, below
            assert not any(got[mode].values()), (mode, got[mode])
        assert replay.buffer.inserted_total == 0
        wait_for(lambda: control.security.refusals.total >= 4 and replay.security.refusals.total >= 4, timeout=WAIT_S)
        assert control.registry.env_steps == 0 and not control.eval_results
        # The run's own actor, meanwhile, is served.
        ctx = zmq.Context()
        actor = _Client(ctx, config, ClientSecurity.from_run_keys("actor"))
        actor.send("control", "hello", {"role": "actor", "actor_index": 0})
        assert actor.reply("control").kind == "welcome"
        ctx.destroy(linger=0)


def _impersonate(port: int, mode: str) -> dict:
    """Bind the dead learner's weights port, plaintext or with a server key of its own, and publish."""
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    if mode == "curve":
        public, secret = zmq.curve_keypair()
        pub.curve_secretkey, pub.curve_publickey, pub.curve_server = secret, public, True
    pub.bind(f"tcp://127.0.0.1:{port}")
    end = time.monotonic() + 3
    while time.monotonic() < end:
        pub.send(b"fake weights")
        time.sleep(0.01)
    ctx.destroy(linger=0)
    return {}


def test_another_user_cannot_pose_as_a_dead_learner(run_keys: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the other user's process as uid 65534")
    base = free_port_base()
    ctx = zmq.Context()
    sub = make_socket(ctx, zmq.SUB, linger_ms=0)
    secure_client(sub, ClientSecurity.from_run_keys("actor"))
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{base + 1}")
    for mode in ("plain", "curve"):
        _as_nobody(lambda mode=mode: _impersonate(base + 1, mode))
        assert not sub.poll(200), f"an actor took a broadcast from another user's {mode} server"
    ctx.destroy(linger=0)


def test_roles_actor_keys_cannot_sample_or_report_evaluations(run_keys: Path) -> None:
    config = _config()
    with _servers(config) as (control, replay):
        ctx = zmq.Context()
        actor = _Client(ctx, config, ClientSecurity.from_run_keys("actor"))
        evaluator = _Client(ctx, config, ClientSecurity.from_run_keys("evaluator"))
        learner = _Client(ctx, config, ClientSecurity.from_run_keys("learner"))
        actor.send("control", "hello", {"role": "actor", "actor_index": 0})
        assert actor.reply("control").kind == "welcome"
        actor.send("ingest", "transitions", {"actor_index": 0}, transitions(16))
        wait_for(lambda: replay.buffer.inserted_total == 16, timeout=WAIT_S)  # an actor may push
        # ... but not sample, send priorities, ask for a snapshot, or pose as an evaluator.
        actor.send("sample", "sample", {"batch_size": 4, "beta": 0.4})
        assert actor.reply("sample").meta["reason"] == "not_learner"
        index = {"index": np.zeros(1, np.int64), "id": np.zeros(1, np.int64), "priority": np.ones(1, np.float32)}
        actor.send("sample", "priorities", {}, index)
        actor.send("sample", "snapshot_request")
        wait_for(lambda: replay.rejected["not_learner"] == 3, timeout=WAIT_S)
        actor.send("control", "eval_result", {"weight_version": 1}, RESULT)
        actor.send("control", "hello", {"role": "evaluator", "actor_index": 0})
        wait_for(lambda: control.rejected["not_evaluator"] == 1, timeout=WAIT_S)
        assert actor.reply("control").kind == "error"
        evaluator.send("control", "hello", {"role": "actor", "actor_index": 1})  # an evaluator key is no actor
        assert evaluator.reply("control").meta["reason"] == "role_not_authorized"
        assert not control.eval_results
        evaluator.send("control", "hello", {"role": "evaluator", "actor_index": 0})
        assert evaluator.reply("control").kind == "welcome"
        evaluator.send("control", "eval_result", {"weight_version": 1}, RESULT)
        wait_for(lambda: len(control.eval_results) == 1, timeout=WAIT_S)
        evaluator.send("sample", "sample", {"batch_size": 4, "beta": 0.4})
        assert evaluator.reply("sample").meta["reason"] == "not_learner"
        learner.send("sample", "sample", {"batch_size": 4, "beta": 0.4})
        assert learner.reply("sample").kind == "batch"  # the learner's key samples
        ctx.destroy(linger=0)


def test_a_flat_allowlist_still_admits_its_keys_as_actor_and_evaluator(tmp_path: Path) -> None:
    keys, flat = tmp_path / "keys", tmp_path / "authorized"
    generate_keypair(keys, "server")
    generate_keypair(keys, "client")
    flat.mkdir(mode=0o755)
    shutil.copyfile(keys / "client.key", flat / "client.key")
    curve = [f"net.curve_secret_key={keys / 'server.key_secret'}", f"net.curve_server_key={keys / 'server.key'}"]
    config = _config(*curve, f"net.curve_authorized_dir={flat}")
    with _servers(config) as (control, replay):
        ctx = zmq.Context()
        client = ClientSecurity.from_paths(keys / "client.key_secret", keys / "server.key")
        actor, evaluator = _Client(ctx, config, client), _Client(ctx, config, client)
        actor.send("control", "hello", {"role": "actor", "actor_index": 0})
        assert actor.reply("control").kind == "welcome"
        actor.send("ingest", "transitions", {"actor_index": 0}, transitions(8))
        wait_for(lambda: replay.buffer.inserted_total == 8, timeout=WAIT_S)
        evaluator.send("control", "hello", {"role": "evaluator", "actor_index": 0})
        assert evaluator.reply("control").kind == "welcome"
        evaluator.send("control", "eval_result", {"weight_version": 1}, RESULT)
        wait_for(lambda: len(control.eval_results) == 1, timeout=WAIT_S)
        actor.send("sample", "sample", {"batch_size": 4, "beta": 0.4})
        assert actor.reply("sample").meta["reason"] == "not_learner"
        ctx.destroy(linger=0)


def test_local_actors_push_over_the_private_ipc_socket(run_keys: Path) -> None:
    config = _config()
    with _servers(config) as (_control, replay):
        assert replay.local_ingest_address == f"ipc://{run_keys.resolve() / 'ingest.sock'}"
        ctx = zmq.Context()
        push = make_socket(ctx, zmq.PUSH, linger_ms=1000)
        push.connect(replay.local_ingest_address)
        push.send_multipart(Encoder("local-actor")("transitions", {"actor_index": 0}, transitions(8)))
        wait_for(lambda: replay.buffer.inserted_total == 8, timeout=WAIT_S)
        ctx.destroy(linger=0)
    assert oct((run_keys).stat().st_mode & 0o777) == "0o700"  # what keeps other users off the socket
