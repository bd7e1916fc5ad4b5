"""Every byte example and every worked Q example in docs/protocol.md, checked against the code.

A foreign implementation copies these bytes and numbers, so a wrong one costs its author a day: the
document once gave the weights subscription prefix of an older protocol version, and a client that
subscribed with it received nothing. Here each example is rebuilt from `common.wire` (bytes) or from
`common.networks` and `common.policy_network` (Q), and, for Q, also from the document's own rules with
numpy alone, so the prose and both implementations must agree.

Byte examples are fenced blocks tagged ```` ```hex NAME ```` (frames under `frame I (...):` lines) and two
tables of the "Byte examples" section; any other run of hex bytes in the document fails the test, so a
new example cannot go unchecked. Worked Q examples are fenced blocks tagged ```` ```json NAME ````.

After a change of the header layout or of PROTOCOL_VERSION, `python tests/common/test_protocol_examples.py`
prints the blocks as they must now read.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from common import wire

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
SENDER = "actor-4242"
STREAM = "1f2e3d4c"

_FENCE = re.compile(r"^```(\w+) ([\w-]+)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
_FRAME_LINE = re.compile(r"^frame (\d+) \(([^,]+), (\d+) bytes\):$")
_HEX_RUN = re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{2}(?: [0-9a-f]{2}){2,}(?![0-9A-Za-z])")


# ---- what each byte example must be ----------------------------------------------------------------
def _transitions() -> list:
    meta = {"actor_index": 2, "stream": STREAM, "sent_before": 128, "count": 1}
    arrays = {
        "obs": np.array([[0.5, -1.0, 0.25, 2.0]], np.float32),
        "action": np.array([1], np.int64),
        "reward": np.array([2.5], np.float32),
        "discount": np.array([0.125], np.float32),
        "next_obs": np.array([[0.75, -0.5, 0.0, 1.5]], np.float32),
        "priority": np.array([0.5], np.float32),
        "version": np.array([7], np.int64),
    }
    return wire.encode("transitions", meta, arrays, sender=SENDER, seq=9)


def _actor_stats() -> list:
    meta = {"actor_index": 2, "env_steps": 4000, "transitions_sent": 3968, "weight_version": 7, "stream": STREAM}
    arrays = {"episode_returns": np.zeros(0, np.float32), "episode_lengths": np.zeros(0, np.int64)}
    return wire.encode("actor_stats", meta, arrays, sender=SENDER, seq=10)


EXAMPLES: dict[str, Callable[[], list]] = {
    "hello": lambda: wire.encode("hello", {"role": "actor", "actor_index": -1}, sender=SENDER, seq=1),
    "get_weights": lambda: wire.encode("get_weights", sender=SENDER, seq=2),
    "transitions": _transitions,
    "actor_stats": _actor_stats,
    "stream_end": lambda: wire.encode(
        "stream_end", {"actor_index": 2, "stream": STREAM, "sent": 3968, "dropped": 0}, sender=SENDER, seq=11
    ),
    "stop": lambda: wire.encode("stop", {"reason": "solved"}, sender="learner", seq=1234),
}
PREFIX_KINDS = ("weights", "weights_ref", "stop")


def _hex(data: Any) -> str:
    return bytes(data).hex(" ")


def _block_text(name: str) -> str:
    """The block as the document must show it (24 bytes a line); frames are labelled by array name."""
    frames = EXAMPLES[name]()
    labels = ["header", *wire.decode(frames).arrays]
    lines = []
    for i, (label, frame) in enumerate(zip(labels, frames, strict=True)):
        data = bytes(frame)
        lines.append(f"frame {i} ({label}, {len(data)} bytes):")
        lines += [_hex(data[start : start + 24]) for start in range(0, len(data), 24)]
    return "\n".join(lines)


# ---- reading the document ------------------------------------------------------------------------
def _doc() -> str:
    return DOC.read_text(encoding="utf-8")


def _fenced(text: str, tag: str) -> dict[str, str]:
    blocks: dict[str, str] = {}
    for match in _FENCE.finditer(text):
        if match.group(1) == tag:
            assert match.group(2) not in blocks, f"two {tag} blocks named {match.group(2)!r}"
            blocks[match.group(2)] = match.group(3)
    return blocks


def _frames(block: str) -> list[tuple[str, int, bytes]]:
    """(label, stated length, bytes) per frame of a hex block."""
    frames: list[tuple[str, int, list[str]]] = []
    for line in block.splitlines():
        match = _FRAME_LINE.match(line.strip())
        if match:
            assert int(match.group(1)) == len(frames), f"frames out of order at {line!r}"
            frames.append((match.group(2), int(match.group(3)), []))
        elif line.strip():
            assert frames, f"hex before the first frame line: {line!r}"
            assert re.fullmatch(r"[0-9a-f]{2}( [0-9a-f]{2})*", line.strip()), f"not hex bytes: {line!r}"
            frames[-1][2].extend(line.split())
    return [(label, length, bytes.fromhex("".join(tokens))) for label, length, tokens in frames]


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _table(section: str, first_header: str) -> list[list[str]]:
    """Rows (header row and separator dropped) of the pipe table whose first header cell is given."""
    rows: list[list[str]] = []
    inside = False
    for line in section.splitlines():
        if not line.startswith("|"):
            if inside:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not inside:
            inside = cells[0] == first_header
            continue
        if not all(re.fullmatch(r":?-+:?", c) for c in cells):
            rows.append(cells)
    assert rows, f"no table headed {first_header!r}"
    return rows


def _backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


# ---- byte examples -------------------------------------------------------------------------------
def test_every_named_byte_block_has_a_builder() -> None:
    assert set(_fenced(_doc(), "hex")) == set(EXAMPLES) - {"hello"}


@pytest.mark.parametrize("name", sorted(set(EXAMPLES) - {"hello"}))
def test_byte_block_equals_the_codec(name: str) -> None:
    documented = _frames(_fenced(_doc(), "hex")[name])
    frames = EXAMPLES[name]()
    names = ["header", *wire.decode(frames).arrays]
    expected = [(label, len(bytes(f)), bytes(f)) for label, f in zip(names, frames, strict=True)]
    assert documented == expected, f"docs/protocol.md block {name!r} must read:\n{_block_text(name)}"


def test_subscription_prefixes_equal_kind_prefix() -> None:
    rows = _table(_section(_doc(), "Byte examples"), "Kind")
    documented = {_backticked(kind)[0]: _backticked(prefix)[0] for kind, prefix in rows}
    expected = {kind: _hex(wire.kind_prefix(kind)) for kind in PREFIX_KINDS}
    assert documented == expected


def test_subscription_prefixes_select_their_kind_only() -> None:
    """A prefix is useful only if every header of its kind starts with it and no other kind's does."""
    for kind in PREFIX_KINDS:
        prefix = wire.kind_prefix(kind)
        for other, build in {**EXAMPLES, kind: lambda k=kind: wire.encode(k, _meta_for(k))}.items():
            header = bytes(build()[0])
            assert header.startswith(prefix) == (wire.decode(build()).kind == kind), (kind, other)


def _meta_for(kind: str) -> dict[str, Any]:
    return {
        "weights": {"version": 3, "run_id": "abc"},
        "weights_ref": {"version": 3, "run_id": "abc", "path": "", "token": ""},
        "stop": {"reason": "solved"},
    }[kind]


def test_annotated_hello_equals_the_codec() -> None:
    rows = _table(_section(_doc(), "Byte examples"), "Bytes")
    pieces = " ".join(" ".join(_backticked(row[0])) for row in rows)
    (header,) = EXAMPLES["hello"]()
    assert bytes.fromhex(pieces.replace(" ", "")) == bytes(header), f"the hello table must spell {_hex(header)}"


def test_no_byte_sequence_in_the_document_goes_unchecked() -> None:
    """Hex outside the checked blocks and tables is an example nobody verifies: refuse it."""
    text = _doc()
    for match in _FENCE.finditer(text):
        if match.group(1) == "hex":
            text = text.replace(match.group(0), "")
    section = _section(text, "Byte examples")
    checked = [line for line in section.splitlines() if line.startswith("|")]
    for line in checked:
        text = text.replace(line, "")
    stray = _HEX_RUN.findall(text)
    assert not stray, f"unchecked byte examples in docs/protocol.md: {stray}"


def test_the_stray_check_catches_the_old_prefix() -> None:
    assert _HEX_RUN.findall("(for `weights`: `86 a1 76 03 a1 6b a7 77 65 69 67 68 74 73`)")


# ---- worked Q examples: the document's rules in numpy alone --------------------------------------
def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0))


def _conv(x: np.ndarray, w: np.ndarray, b: np.ndarray, stride: int) -> np.ndarray:
    """Cross-correlation, no padding: y[n, o, i, j] = b[o] + sum w[o, c, u, v] x[n, c, s i + u, s j + v]."""
    k = w.shape[2]
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))[:, :, ::stride, ::stride]
    return np.einsum("nchwuv,ocuv->nohw", windows, w, optimize=True) + b[None, :, None, None]


def document_q(
    example: dict[str, Any],
    weights: dict[str, np.ndarray],
    obs: np.ndarray,
    *,
    combine: str = "mean",
    last_relu: bool = True,
    flatten: str = "nchw",
    scale: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """(features, Q) as docs/protocol.md's "Computing Q" says; the keywords make the wrong variants."""
    net = example["network"]
    if net["torso"] == "mlp":
        x = obs.reshape(len(obs), -1).astype(np.float32)
        layers = len(net["hidden"])
        for i in range(layers):
            x = x @ weights[f"torso.layers.{2 * i}.weight"].T + weights[f"torso.layers.{2 * i}.bias"]
            x = _relu(x) if (last_relu or i < layers - 1) else x
    else:
        x = obs.astype(np.float32) / np.float32(255.0 if scale else 1.0)
        for i, stride in ((0, 4), (2, 2), (4, 1)):
            x = _relu(_conv(x, weights[f"torso.convs.{i}.weight"], weights[f"torso.convs.{i}.bias"], stride))
        x = x.reshape(len(x), -1) if flatten == "nchw" else x.transpose(0, 2, 3, 1).reshape(len(x), -1)
        x = _relu(x @ weights["torso.dense.0.weight"].T + weights["torso.dense.0.bias"])
    if not net["dueling"]:
        return x, x @ weights["q.weight"].T + weights["q.bias"]
    value = x @ weights["value.weight"].T + weights["value.bias"]
    advantage = x @ weights["advantage.weight"].T + weights["advantage.bias"]
    reduce = advantage.mean if combine == "mean" else advantage.max
    return x, value + advantage - reduce(axis=1, keepdims=True)


# The rules of the Nature CNN example, as the document writes them and as numpy computes them.
WEIGHT_RULE = ("(((7 j + 3 s) mod 13) - 6) / 32", lambda j, s: (((7 * j + 3 * s) % 13) - 6) / 32)
OBS_RULES = [
    ("(31 c + 7 h + 3 w) mod 256", lambda c, h, w: (31 * c + 7 * h + 3 * w) % 256),
    ("(5 c + 11 h w) mod 256", lambda c, h, w: (5 * c + 11 * h * w) % 256),
]


def _parameters(example: dict[str, Any]) -> dict[str, np.ndarray]:
    if "weight_rule" not in example:
        return {name: np.asarray(value, np.float32) for name, value in example["weights"].items()}
    text, rule = WEIGHT_RULE
    assert example["weight_rule"] == text
    out = {}
    for s, (name, shape) in enumerate(example["weights"].items()):
        out[name] = rule(np.arange(int(np.prod(shape))), s).astype(np.float32).reshape(shape)
    return out


def _observations(example: dict[str, Any]) -> np.ndarray:
    if "obs_rule" not in example:
        return np.asarray(example["obs"], np.float32)
    assert example["obs_rule"] == [text for text, _ in OBS_RULES]
    grid = np.meshgrid(*(np.arange(n) for n in example["obs_shape"]), indexing="ij")
    return np.stack([rule(*grid) for _, rule in OBS_RULES]).astype(np.uint8)


def _q_examples() -> dict[str, dict[str, Any]]:
    return {name: json.loads(text) for name, text in _fenced(_doc(), "json").items()}


def _tolerance(values: list) -> float:
    """Half a unit of the last decimal the document shows, plus float32 rounding."""
    decimals = max(len(str(v).partition(".")[2]) for row in values for v in row)
    return 0.5 * 10.0**-decimals + 1e-5


Q_EXAMPLES = ("mlp-dueling", "mlp-plain", "nature-cnn")


def test_the_worked_examples_are_there() -> None:
    assert set(_q_examples()) == set(Q_EXAMPLES)


@pytest.mark.parametrize("name", Q_EXAMPLES)
def test_documented_q_follows_from_the_documented_rules(name: str) -> None:
    example = _q_examples()[name]
    features, q = document_q(example, _parameters(example), _observations(example))
    np.testing.assert_allclose(q, example["q"], atol=_tolerance(example["q"]), rtol=0)
    if "features" in example:
        np.testing.assert_allclose(features, example["features"], atol=_tolerance(example["features"]), rtol=0)


@pytest.mark.parametrize("name", Q_EXAMPLES)
def test_our_networks_compute_the_documented_q(name: str) -> None:
    """The learner's torch network and the actors' network (numpy for MLPs) give the document's Q."""
    import torch

    from common.config import NetworkConfig
    from common.networks import QNetwork, load_numpy_weights
    from common.policy_network import policy_network

    example = _q_examples()[name]
    config = NetworkConfig(**{**example["network"], "hidden": tuple(example["network"]["hidden"])})
    shape, actions = tuple(example["obs_shape"]), example["num_actions"]
    weights, obs = _parameters(example), _observations(example)
    learner_net = QNetwork(shape, actions, config).eval()
    state = learner_net.state_dict()
    assert list(state) == list(weights), "the document's parameter names (and their order) are the state_dict's"
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: v.shape for k, v in weights.items()}
    load_numpy_weights(learner_net, weights)
    with torch.no_grad():
        learner_q = learner_net(torch.from_numpy(obs)).numpy()
    actor_net = policy_network(shape, actions, config)
    actor_net.load(weights)
    tolerance = _tolerance(example["q"])
    np.testing.assert_allclose(learner_q, example["q"], atol=tolerance, rtol=0)
    np.testing.assert_allclose(actor_net(obs), example["q"], atol=tolerance, rtol=0)


@pytest.mark.parametrize(
    ("name", "mistake"),
    [
        ("mlp-dueling", {"combine": "max"}),
        ("mlp-dueling", {"last_relu": False}),
        ("nature-cnn", {"combine": "max"}),
        ("nature-cnn", {"flatten": "nhwc"}),
        ("nature-cnn", {"scale": False}),
    ],
)
def test_the_examples_catch_each_classic_mistake(name: str, mistake: dict[str, Any]) -> None:
    """An example that a wrong implementation also reproduces would prove nothing."""
    example = _q_examples()[name]
    _, q = document_q(example, _parameters(example), _observations(example), **mistake)
    assert np.abs(q - np.asarray(example["q"])).max() > 10 * _tolerance(example["q"])


def test_nature_cnn_layer_table_matches_the_network() -> None:
    """The table's parameter shapes and 84 x 84 output sizes, for C = 4 frames and h = 512."""
    import torch

    from common.config import NetworkConfig
    from common.networks import QNetwork

    rows = _table(_section(_doc(), "Computing Q from the published weights"), "Layer")
    net = QNetwork((4, 84, 84), 6, NetworkConfig(torso="nature_cnn", hidden=(512,)))
    state = {name: tuple(t.shape) for name, t in net.state_dict().items()}
    documented = {}
    for row in rows:
        for name, shape in re.findall(r"`([^`]+)` \(([^)]*)\)", row[1]):
            dims = [d.strip() for d in shape.split(",") if d.strip()]
            documented[name] = tuple(int({"C": "4", "h": "512"}.get(d, d)) for d in dims)
    assert documented == {name: shape for name, shape in state.items() if name.startswith("torso.")}
    x = torch.zeros(1, 4, 84, 84)
    outputs = []
    for module in net.torso.convs:
        x = module(x)
        if isinstance(module, torch.nn.Conv2d):
            outputs.append(" x ".join(str(d) for d in x.shape[1:]))
    outputs.append(str(x.shape[1]))
    assert [row[4] for row in rows[:4]] == outputs


# ---- socket options: the table's values are the reference actor's -------------------------------
def _socket_options() -> dict[tuple[str, str], str]:
    rows = _table(_section(_doc(), "Socket options"), "Socket")
    return {(row[0], row[1]): row[2] for row in rows}


def test_documented_socket_options_are_the_reference_values() -> None:
    from actor.actor import FLUSH_TIMEOUT_S, SEND_POLL_MS
    from common import sockets
    from common.config import NetConfig

    options = _socket_options()
    assert options[("every socket", "`ZMQ_LINGER`")].startswith(f"{sockets.LINGER_MS} ms")
    assert f"{int(FLUSH_TIMEOUT_S * 1000)} ms" in options[("every socket", "`ZMQ_LINGER`")]
    heartbeats = ("control DEALER", "`ZMQ_HEARTBEAT_IVL`, `ZMQ_HEARTBEAT_TIMEOUT`, `ZMQ_HEARTBEAT_TTL`")
    ivl, timeout = sockets.HEARTBEAT_IVL_MS, sockets.HEARTBEAT_TIMEOUT_MS
    assert options[heartbeats] == f"{ivl} ms, {timeout} ms, {timeout} ms"
    assert options[("PUSH", "`ZMQ_SNDBUF` (and `ZMQ_RCVBUF`)")] == f"{sockets.BULK_KERNEL_BUFFER} bytes"
    assert (
        options[("PUSH", "`ZMQ_SNDHWM` (and `ZMQ_RCVHWM`)")]
        == f"`net.send_hwm` messages (default {NetConfig().send_hwm})"
    )
    assert f"slices of {SEND_POLL_MS} ms" in _section(_doc(), "Socket options")


@pytest.fixture
def link() -> Any:
    import zmq

    from actor.link import LearnerLink
    from common.config import RunConfig
    from common.sockets import free_port_base

    ctx = zmq.Context()
    link = LearnerLink("127.0.0.1", free_port_base(1), role="actor", ctx=ctx)  # connects lazily: nobody listens
    link.subscribe(RunConfig())
    yield link
    link.close()
    ctx.term()


def test_the_reference_link_sets_the_documented_options(link: Any) -> None:
    import zmq

    options = _socket_options()
    control, sub = link.control, link.weights_sub
    assert options[("control DEALER", "`ZMQ_SNDHWM`, `ZMQ_RCVHWM`")] == f"{control.getsockopt(zmq.SNDHWM)} messages"
    assert control.getsockopt(zmq.RCVHWM) == control.getsockopt(zmq.SNDHWM)
    assert options[("control DEALER", "`ZMQ_MAXMSGSIZE`")] == f"{control.getsockopt(zmq.MAXMSGSIZE) >> 20} MiB"
    assert options[("SUB", "`ZMQ_RCVHWM` (and `ZMQ_SNDHWM`)")] == f"{sub.getsockopt(zmq.RCVHWM)} messages"
    assert sub.getsockopt(zmq.HEARTBEAT_IVL) == 0 and sub.getsockopt(zmq.TCP_KEEPALIVE) == 1


def test_the_reference_control_socket_is_not_immediate_as_documented(link: Any) -> None:
    import zmq

    assert _socket_options()[("control DEALER", "`ZMQ_IMMEDIATE`")].startswith("0")
    assert link.control.getsockopt(zmq.IMMEDIATE) == 0


if __name__ == "__main__":
    for kind in PREFIX_KINDS:
        print(f"| `{kind}` | `{_hex(wire.kind_prefix(kind))}` |")
    print(f"hello: {_hex(EXAMPLES['hello']()[0])}")
    for example in sorted(set(EXAMPLES) - {"hello"}):
        print(f"\n```hex {example}\n{_block_text(example)}\n```")


# ---- the worked exploration example ----------------------------------------------------------------
def test_the_documented_epsilons_are_the_ladders_of_both_rules() -> None:
    """ "Acting"'s example, from the document's formula in plain Python and from common.epsilon_ladder."""
    from common.epsilon_ladder import slot_epsilons

    example = json.loads(_fenced(_doc(), "epsilons")["apex-2x4"])
    n, e, base, alpha = (example[k] for k in ("num_actors", "num_envs", "epsilon_base", "epsilon_alpha"))

    def eps(k: int, m: int) -> float:
        return base if m == 1 else base ** (1 + alpha * k / (m - 1))

    for i in range(3):
        by_actor = [eps(i % n, n)] * e
        by_slot = [eps((i % n) * e + j, n * e) for j in range(e)]
        assert example["actors"][i] == pytest.approx(by_actor, rel=1e-9)
        assert example["slots"][i] == pytest.approx(by_slot, rel=1e-9)
        assert slot_epsilons(i, e, n, base, alpha, "actors") == pytest.approx(example["actors"][i], rel=1e-9)
        assert slot_epsilons(i, e, n, base, alpha, "slots") == pytest.approx(example["slots"][i], rel=1e-9)
