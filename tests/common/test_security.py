"""CurveZMQ over real sockets on loopback: authorized clients get through, everyone else gets nothing.

Each "gets nothing" check waits a while and then asserts the server received nothing, so the tests fail
if a refused client ever gets a message through, and the refusal counters must rise for them to pass.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zmq

from common.config import RunConfig, load_config
from common.envs import EnvSpec
from common.errors import ConfigError, StartupError
from common.security import (
    ClientSecurity,
    KeyPair,
    ServerSecurity,
    generate_keypair,
    load_keypair,
    secure_client,
    secure_server,
)
from common.sockets import bind, free_port_base, make_socket, require_secure_bind
from common.wire import Encoder, decode, kind_prefix
from tests.helpers import wait_for

NOTHING_WAIT_S = 1.0
SPEC = EnvSpec((4,), np.dtype(np.float32), 2)


@dataclass
class Keys:
    server_public: Path
    server_secret: Path
    authorized_dir: Path
    dir: Path

    def client(self, name: str, *, authorize: bool) -> ClientSecurity:
        public, secret = generate_keypair(self.dir, name)
        if authorize:
            shutil.copy(public, self.authorized_dir / public.name)
        return ClientSecurity.from_paths(secret, self.server_public)

    def server_pair(self) -> KeyPair:
        return load_keypair(self.server_secret)


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    server_public, server_secret = generate_keypair(tmp_path / "keys", "server")
    authorized = tmp_path / "authorized"
    authorized.mkdir(mode=0o755)
    return Keys(server_public, server_secret, authorized, tmp_path / "keys")


@dataclass
class Server:
    security: ServerSecurity
    pull: zmq.Socket
    router: zmq.Socket
    pub: zmq.Socket
    ports: dict[str, int]


@pytest.fixture
def server(keys: Keys) -> Iterator[Server]:
    ctx = zmq.Context()
    security = ServerSecurity(ctx, keys.server_pair(), keys.authorized_dir)
    socks = {
        "pull": make_socket(ctx, zmq.PULL),
        "router": make_socket(ctx, zmq.ROUTER),
        "pub": make_socket(ctx, zmq.PUB),
    }
    ports = {}
    for name, sock in socks.items():
        secure_server(sock, security, name)
        ports[name] = sock.bind_to_random_port("tcp://127.0.0.1")
    yield Server(security, socks["pull"], socks["router"], socks["pub"], ports)
    for sock in socks.values():
        sock.close(linger=0)
    security.close()
    ctx.term()


@pytest.fixture
def client_ctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def _clients(ctx: zmq.Context, server: Server, curve: ClientSecurity | None) -> tuple[zmq.Socket, ...]:
    push, dealer, sub = make_socket(ctx, zmq.PUSH), make_socket(ctx, zmq.DEALER), make_socket(ctx, zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    for sock, name in ((push, "pull"), (dealer, "router"), (sub, "pub")):
        secure_client(sock, curve)
        sock.connect(f"tcp://127.0.0.1:{server.ports[name]}")
    return push, dealer, sub


def test_an_authorized_client_gets_through_pull_router_and_pub(
    keys: Keys, server: Server, client_ctx: zmq.Context
) -> None:
    push, dealer, sub = _clients(client_ctx, server, keys.client("actor", authorize=True))
    push.send(b"transitions")
    assert server.pull.poll(5000), "PULL got nothing from an authorized client"
    assert server.pull.recv() == b"transitions"

    dealer.send(b"ping")
    assert server.router.poll(5000), "ROUTER got nothing from an authorized client"
    identity, body = server.router.recv_multipart()
    assert body == b"ping"
    server.router.send_multipart([identity, b"pong"])
    assert dealer.poll(5000) and dealer.recv() == b"pong"

    deadline = time.monotonic() + 5
    while not sub.poll(50):  # a subscription takes a moment to reach the publisher
        assert time.monotonic() < deadline, "an authorized subscriber never received a broadcast"
        server.pub.send(b"weights")
    assert sub.recv() == b"weights"
    assert server.security.denied == 0


@pytest.mark.parametrize("who", ["unlisted_key", "plaintext", "wrong_server_key"])
def test_a_refused_client_gets_nothing_and_is_counted(
    keys: Keys, server: Server, client_ctx: zmq.Context, who: str
) -> None:
    if who == "unlisted_key":  # a valid pair and the server's public key, but not in the allowlist
        curve: ClientSecurity | None = keys.client("intruder", authorize=False)
        reason = "unknown_key"
    elif who == "plaintext":
        curve, reason = None, "handshake_failed"
    else:  # an authorized pair, pointed at some other server's public key
        listed = keys.client("actor", authorize=True)
        curve = dataclasses.replace(listed, server_key=zmq.curve_keypair()[0])
        reason = "handshake_failed"
    push, dealer, sub = _clients(client_ctx, server, curve)
    push.send(b"transitions", zmq.NOBLOCK)
    dealer.send(b"ping", zmq.NOBLOCK)
    deadline = time.monotonic() + NOTHING_WAIT_S
    while time.monotonic() < deadline:
        server.pub.send(b"weights")
        assert not server.pull.poll(20), f"PULL received from a {who} client"
        assert not server.router.poll(0), f"ROUTER received from a {who} client"
        assert not sub.poll(0), f"a {who} subscriber received a broadcast"
    # One refusal per socket at least (each may retry and be refused again).
    wait_for(lambda: server.security.denied >= 3)
    assert set(server.security.refusals.by_reason()) == {reason}


def test_a_key_added_to_the_directory_is_accepted_without_a_restart(
    keys: Keys, server: Server, client_ctx: zmq.Context
) -> None:
    late = keys.client("late", authorize=False)
    first = make_socket(client_ctx, zmq.PUSH)
    secure_client(first, late)
    first.connect(f"tcp://127.0.0.1:{server.ports['pull']}")
    first.send(b"too early")
    wait_for(lambda: server.security.denied >= 1)
    assert not server.pull.poll(200)
    shutil.copy(keys.dir / "late.key", keys.authorized_dir / "late.key")
    second = make_socket(client_ctx, zmq.PUSH)
    secure_client(second, late)
    second.connect(f"tcp://127.0.0.1:{server.ports['pull']}")
    second.send(b"now listed")
    assert server.pull.poll(5000)
    assert server.pull.recv() == b"now listed"


@pytest.mark.parametrize("host", ["0.0.0.0", "*", "10.0.0.5", "10.213.7.1", "192.168.1.20", "::", "fd00::1"])
def test_a_non_loopback_bind_without_curve_is_refused(host: str) -> None:
    with pytest.raises(StartupError) as err:
        require_secure_bind(host, curve_configured=False)
    message = str(err.value)
    assert "\n" not in message
    for fix in ("distdqn-keygen", "net.curve_secret_key", "net.curve_server_key", "net.curve_authorized_dir"):
        assert fix in message
    require_secure_bind(host, curve_configured=True)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_curve(host: str) -> None:
    require_secure_bind(host, curve_configured=False)


def test_bind_itself_refuses_a_plain_socket_off_loopback() -> None:
    """The check sits in bind(), so a server socket that forgot secure_server cannot listen off loopback."""
    ctx = zmq.Context()
    sock = make_socket(ctx, zmq.PULL)
    try:
        with pytest.raises(StartupError, match="distdqn-keygen"):
            bind(sock, "0.0.0.0", 1, "test ingest")  # refused before any bind is attempted
        assert sock.getsockopt(zmq.LAST_ENDPOINT) == b""
    finally:
        sock.close()
        ctx.term()


def test_curve_settings_go_together() -> None:
    with pytest.raises(ConfigError, match="net.curve_server_key"):
        load_config("cartpole", ["net.curve_secret_key=/k/server.key_secret", "net.curve_authorized_dir=/k/ok"])
    with pytest.raises(ConfigError, match="net.curve_secret_key"):
        load_config("cartpole", ["net.curve_server_key=/k/server.key"])
    net = load_config(
        "cartpole",
        ["net.curve_secret_key=/k/s.key_secret", "net.curve_server_key=/k/s.key", "net.curve_authorized_dir=/k/ok"],
    ).net
    assert net.curve_authorized_dir == "/k/ok"
    assert RunConfig.from_dict(load_config("cartpole").to_dict()).net.curve_secret_key == ""


# ---- the real servers --------------------------------------------------------------------------


def _curve_config(keys: Keys, *extra: str) -> RunConfig:
    config = load_config(
        "cartpole",
        [
            "replay.min_size=128",
            "replay.capacity=1000",
            f"net.curve_secret_key={keys.server_secret}",
            f"net.curve_server_key={keys.server_public}",
            f"net.curve_authorized_dir={keys.authorized_dir}",
            *extra,
        ],
    )
    return dataclasses.replace(config, net=config.net.with_port_base(free_port_base()))


def _transitions(n: int) -> dict[str, np.ndarray]:
    return {
        "obs": np.zeros((n, 4), np.float32),
        "action": np.zeros(n, np.int64),
        "reward": np.ones(n, np.float32),
        "discount": np.full(n, 0.97, np.float32),
        "next_obs": np.zeros((n, 4), np.float32),
        "priority": np.ones(n, np.float32),
        "version": np.zeros(n, np.int64),
    }


def test_the_replay_server_stores_only_authorized_transitions_and_reports_refusals(
    keys: Keys, client_ctx: zmq.Context
) -> None:
    from replay.server import ReplayServer

    config = _curve_config(keys)
    server = ReplayServer(config, SPEC)
    stop = threading.Event()
    thread = threading.Thread(target=server.run, args=(stop,), kwargs={"log_interval_s": 60}, daemon=True)
    thread.start()
    try:
        port = config.net.ingest_port
        senders = {1: keys.client("actor", authorize=True), 2: keys.client("intruder", authorize=False), 3: None}
        for index, curve in senders.items():
            push = make_socket(client_ctx, zmq.PUSH)
            secure_client(push, curve)
            push.connect(f"tcp://127.0.0.1:{port}")
            push.send_multipart(Encoder(f"actor-{index}")("transitions", {"actor_index": index}, _transitions(8)))
        wait_for(lambda: server.buffer.inserted_total == 8)
        wait_for(lambda: server.security is not None and server.security.denied >= 2)
        time.sleep(NOTHING_WAIT_S)
        assert dict(server.stored_by_actor) == {1: 8}
        # The learner's own connection: the server key pair is implicitly authorized.
        learner = make_socket(client_ctx, zmq.DEALER)
        secure_client(learner, ClientSecurity.from_paths(keys.server_secret, keys.server_public))
        learner.connect(f"tcp://127.0.0.1:{config.net.sample_port}")
        learner.send_multipart(Encoder("learner")("stats_request"))
        assert learner.poll(5000), "the learner (server key pair) got no stats"
        stats = decode(learner.recv_multipart(), expect=("replay_stats",)).meta
        assert stats["inserted"] == 8
        assert stats["rejected"]["unauthenticated"] >= 2
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_the_control_server_gives_weights_and_welcomes_only_to_authorized_actors(
    keys: Keys, client_ctx: zmq.Context
) -> None:
    from learner.control import ControlServer

    config = _curve_config(keys)
    ctx = zmq.Context()
    control = ControlServer(config, ctx)
    control.set_weights(3, {"w": np.ones(4, np.float32)})
    control.start()
    try:
        net = config.net
        peers = {}
        for name, curve in (("actor", keys.client("actor", authorize=True)), ("plain", None)):
            dealer, sub = make_socket(client_ctx, zmq.DEALER), make_socket(client_ctx, zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, kind_prefix("weights") if name == "actor" else b"")  # plain: anything
            for sock, port in ((dealer, net.learner_port), (sub, net.weights_port)):
                secure_client(sock, curve)
                sock.connect(f"tcp://127.0.0.1:{port}")
            dealer.send_multipart(Encoder(name)("hello", {"role": "actor", "actor_index": -1}))
            peers[name] = (dealer, sub)
        actor_dealer, actor_sub = peers["actor"]
        assert actor_dealer.poll(5000)
        assert decode(actor_dealer.recv_multipart(), expect=("welcome",)).meta["actor_index"] >= 0
        deadline = time.monotonic() + 5
        while not actor_sub.poll(50):
            assert time.monotonic() < deadline, "an authorized subscriber got no weights"
            control.set_weights(3, {"w": np.ones(4, np.float32)})
        assert decode(actor_sub.recv_multipart(), expect=("weights",)).meta["version"] == 3
        plain_dealer, plain_sub = peers["plain"]
        deadline = time.monotonic() + NOTHING_WAIT_S
        while time.monotonic() < deadline:
            control.set_weights(3, {"w": np.ones(4, np.float32)})
            assert not plain_sub.poll(20), "a plaintext subscriber received weights"
            assert not plain_dealer.poll(0), "a plaintext client was answered"
        wait_for(lambda: control.unauthenticated >= 2)
    finally:
        control.close()
        ctx.destroy(linger=0)


def test_an_actor_link_joins_with_its_own_keys_and_an_unlisted_one_gets_a_clear_error(keys: Keys) -> None:
    from actor.link import LearnerLink
    from learner.control import ControlServer

    config = _curve_config(keys)
    ctx = zmq.Context()
    control = ControlServer(config, ctx)
    control.set_weights(5, {"w": np.ones(4, np.float32)})
    control.start()
    links: list[LearnerLink] = []
    stop = threading.Event()
    try:
        port = config.net.learner_port
        good = LearnerLink("127.0.0.1", port, role="actor", ctx=ctx, curve=keys.client("actor", authorize=True))
        links.append(good)
        welcome = good.join(-1, stop, timeout_s=10)
        # The learner keeps its key paths to itself; the link uses its own keys.
        assert welcome.config.net.curve_secret_key == "" and welcome.config.net.curve_authorized_dir == ""
        good.subscribe(welcome.config)
        assert good.fetch_weights(stop, timeout_s=10).meta["version"] == 5

        for curve in (keys.client("intruder", authorize=False), None):
            bad = LearnerLink("127.0.0.1", port, role="actor", ctx=ctx, curve=curve)
            links.append(bad)
            started = time.monotonic()
            with pytest.raises(StartupError, match="no answer from the learner") as err:
                bad.join(-1, stop, timeout_s=2.5)  # spans a second hello: it must not block after the refusal
            assert time.monotonic() - started < 6
            assert "--curve" in str(err.value)
        assert control.unauthenticated >= 2
    finally:
        for link in links:
            link.close()
        control.close()
        ctx.destroy(linger=0)
