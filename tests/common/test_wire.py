"""The wire codec: every kind round-trips, and anything malformed is one DecodeError with the right reason.

The decoder is the first thing untrusted network input reaches in the replay server and the learner, so
besides one test per rejection rule there are property tests: arbitrary frames and mutated valid
messages must end in a DecodeError or in a message that really satisfies its schema, never in another
exception (which would take a server down) or in arrays that disagree with their declared specs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.config import RunConfig
from common.wire import (
    ALLOWED_DTYPES,
    MAX_ARRAYS,
    MAX_HEADER_BYTES,
    MAX_RANK,
    PROTOCOL_VERSION,
    SCHEMAS,
    DecodeError,
    Encoder,
    Message,
    decode,
    encode,
    kind_prefix,
)

Meta = dict[str, Any]
Arrays = dict[str, np.ndarray]

_SEED = 1234
_rng = np.random.default_rng(_SEED)


def _reseed() -> None:
    """Make every `valid(kind)` byte-identical, so that hypothesis replays a failing example exactly."""
    _rng.bit_generator.state = np.random.default_rng(_SEED).bit_generator.state


def _obs(batch: int) -> np.ndarray:
    return _rng.normal(size=(batch, 4)).astype(np.float32)


def _transitions(batch: int = 5) -> tuple[Meta, Arrays]:
    gamma3 = np.float32(0.99**3)
    meta = {"actor_index": 3, "stream": "9f3c01aa", "sent_before": 640, "count": batch}
    return meta, {
        "obs": _obs(batch),
        "action": _rng.integers(0, 2, size=batch).astype(np.int64),
        "reward": _rng.normal(size=batch).astype(np.float32),
        "discount": np.where(np.arange(batch) == 2, 0, gamma3).astype(np.float32),
        "next_obs": _obs(batch),
        "priority": np.abs(_rng.normal(size=batch)).astype(np.float32),
        "version": np.full(batch, 17, dtype=np.int64),
    }


# One realistic example per kind, as the processes send them.
EXAMPLES: dict[str, Callable[[], tuple[Meta, Arrays]]] = {
    "hello": lambda: ({"role": "actor", "actor_index": -1, "host": "node-3", "pid": 4242}, {}),
    "welcome": lambda: ({"config": RunConfig().to_dict(), "actor_index": 5, "run_id": "0123456789ab"}, {}),
    "get_weights": lambda: ({}, {}),
    "weights": lambda: (
        {"version": 17},
        {
            "torso.layers.0.weight": _rng.normal(size=(8, 4)).astype(np.float32),
            "torso.layers.0.bias": np.zeros(8, dtype=np.float32),
            "value.weight": _rng.normal(size=(1, 8)).astype(np.float32),
            "advantage.bias": np.array([0.5, -0.25], dtype=np.float32),
        },
    ),
    "weights_ref": lambda: (
        {
            "version": 17,
            "run_id": "0123456789ab",
            "path": "/dev/shm/distdqn-weights-0123456789ab-" + "a" * 16,
            "token": "a" * 16,
        },
        {},
    ),
    "transitions": _transitions,
    "frame_transitions": lambda: (
        {"actor_index": 2, "stream": "77aa01c3", "sent_before": 0, "count": 3},
        {
            "frames": _rng.integers(0, 256, size=(7, 6, 6), dtype=np.uint8),
            "obs_frames": np.array([[0, 0, 1, 2], [0, 1, 2, 3], [1, 2, 3, 4]], dtype=np.int32),
            "next_obs_frames": np.array([[2, 3, 4, 5], [3, 4, 5, 6], [4, 5, 6, 6]], dtype=np.int32),
            "action": np.array([0, 3, 1], dtype=np.int64),
            "reward": np.array([0.0, 1.0, -1.0], dtype=np.float32),
            "discount": np.array([0.97, 0.97, 0.0], dtype=np.float32),
            "priority": np.array([0.5, 1.5, 0.25], dtype=np.float32),
            "version": np.full(3, 4, dtype=np.int64),
        },
    ),
    "stream_end": lambda: ({"actor_index": 3, "stream": "9f3c01aa", "sent": 47_900, "dropped": 64}, {}),
    "actor_stats": lambda: (
        {
            "actor_index": 1,
            "env_steps": 48_000,
            "transitions_sent": 47_900,
            "transitions_dropped": 0,
            "stream": "9f3c01aa",
            "weight_version": 17,
            "epsilon": 0.4**1.5,
            "steps_per_s": 1234.5,
        },
        {
            "episode_returns": np.array([21.0, 500.0], dtype=np.float32),
            "episode_lengths": np.array([21, 500], dtype=np.int64),
        },
    ),
    "eval_result": lambda: (
        {"weight_version": 17},
        {"returns": np.linspace(400, 500, 10, dtype=np.float32), "lengths": np.arange(400, 410, dtype=np.int64)},
    ),
    "sample": lambda: ({"batch_size": 128, "beta": 0.4}, {}),
    "batch": lambda: (
        {"size": 4},
        {
            "obs": _obs(4),
            "action": np.array([0, 1, 1, 0], dtype=np.int64),
            "reward": np.array([1.0, 2.97, 0.5, 1.99], dtype=np.float32),
            "discount": np.array([0.97, 0.0, 0.97, 0.97], dtype=np.float32),
            "next_obs": _obs(4),
            "weight": np.array([1.0, 0.5, 0.25, 0.75], dtype=np.float32),
            "index": np.array([7, 99_999, 0, 42], dtype=np.int64),
            "id": np.array([1007, 99_999, 200_000, 42], dtype=np.int64),
        },
    ),
    "batch_ref": lambda: ({"size": 512, "slot": 2, "token": "0123456789abcdef0123456789abcdef"}, {}),
    "priorities": lambda: (
        {},
        {
            "index": np.array([7, 99_999, 0], dtype=np.int64),
            "id": np.array([1007, 99_999, 200_000], dtype=np.int64),
            "priority": np.array([0.1, 2.5, 0.0], dtype=np.float32),
        },
    ),
    "stats_request": lambda: ({}, {}),
    "snapshot_request": lambda: ({}, {}),
    "snapshot_done": lambda: (
        {
            "path": "runs/cartpole-s0/replay/snapshot.npz",
            "transitions": 100_000,
            "inserted": 2_345_678,
            "bytes": 6_400_512,
            "seconds": 0.21,
        },
        {},
    ),
    "replay_stats": lambda: (
        {
            "size": 1000,
            "capacity": 100_000,
            "inserted": 1000,
            "sampled": 8000,
            "rejected": {"bad_action": 2, "wrong_version": 1},
            "insert_rate": 250.0,
            "sample_rate": 2000.0,
            "samples_per_insert": 8.0,
            "waiting": "",
        },
        {},
    ),
    "stop": lambda: ({"reason": "solved"}, {}),
    "error": lambda: ({"reason": "wrong_version", "detail": "got 2, this peer speaks 1"}, {}),
}


def transmit(frames: list[Any]) -> list[bytes]:
    """What a receiver gets: plain bytes, as if the frames had crossed a socket."""
    return [bytes(frame) for frame in frames]


def valid(kind: str) -> list[bytes]:
    _reseed()
    meta, arrays = EXAMPLES[kind]()
    return transmit(encode(kind, meta, arrays, sender="test-1", seq=9))


_DROP = object()


def with_header(frames: list[bytes], **changes: Any) -> list[bytes]:
    """`frames` with header keys replaced (or removed, with _DROP) and the header re-packed."""
    header = msgpack.unpackb(frames[0])
    for key, value in changes.items():
        if value is _DROP:
            del header[key]
        else:
            header[key] = value
    return [msgpack.packb(header, use_bin_type=True), *frames[1:]]


def with_meta(frames: list[bytes], **changes: Any) -> list[bytes]:
    meta = dict(msgpack.unpackb(frames[0])["m"])
    for key, value in changes.items():
        if value is _DROP:
            del meta[key]
        else:
            meta[key] = value
    return with_header(frames, m=meta)


def with_spec(frames: list[bytes], index: int, spec: Any) -> list[bytes]:
    specs = list(msgpack.unpackb(frames[0])["a"])
    specs[index] = spec
    return with_header(frames, a=specs)


def reason_of(frames: list[Any], **kwargs: Any) -> str:
    with pytest.raises(DecodeError) as info:
        decode(frames, **kwargs)
    return info.value.reason


# ---- round trips ------------------------------------------------------------------------------------


def test_examples_cover_every_kind() -> None:
    assert set(EXAMPLES) == set(SCHEMAS)


def _assert_same(msg: Message, kind: str, meta: Meta, arrays: Arrays) -> None:
    assert msg.kind == kind
    assert msg.version == PROTOCOL_VERSION
    assert msg.meta == meta
    assert list(msg.arrays) == list(arrays)
    for name, sent in arrays.items():
        got = msg.arrays[name]
        assert got.dtype.name == np.asarray(sent).dtype.name, name
        assert got.shape == np.shape(sent), name
        np.testing.assert_array_equal(got, sent, err_msg=name)


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_round_trip_every_kind(kind: str) -> None:
    meta, arrays = EXAMPLES[kind]()
    msg = decode(transmit(encode(kind, meta, arrays, sender="actor-77", seq=12345)))
    _assert_same(msg, kind, meta, arrays)
    assert (msg.sender, msg.seq) == ("actor-77", 12345)
    for array in msg.arrays.values():
        assert not array.flags.writeable  # views of the received frames, not copies


@pytest.mark.parametrize("kind", sorted(k for k, s in SCHEMAS.items() if s.optional_meta))
def test_round_trip_without_optional_meta(kind: str) -> None:
    meta, arrays = EXAMPLES[kind]()
    required = {k: v for k, v in meta.items() if k in SCHEMAS[kind].meta}
    _assert_same(decode(transmit(encode(kind, required, arrays))), kind, required, arrays)


def test_decode_accepts_encoders_own_buffers_and_zmq_frames() -> None:
    """The in-process path (memoryviews) and the copy=False receive path (zmq.Frame) decode alike."""
    meta, arrays = EXAMPLES["transitions"]()
    frames = encode("transitions", meta, arrays)
    _assert_same(decode(frames), "transitions", meta, arrays)
    _assert_same(decode([zmq.Frame(bytes(f)) for f in frames]), "transitions", meta, arrays)


def test_round_trip_over_a_real_socket() -> None:
    meta, arrays = EXAMPLES["batch"]()
    ctx = zmq.Context()
    try:
        a, b = ctx.socket(zmq.PAIR), ctx.socket(zmq.PAIR)
        a.bind("inproc://wire-test")
        b.connect("inproc://wire-test")
        a.send_multipart(encode("batch", meta, arrays), copy=False)
        assert b.poll(5000)
        _assert_same(decode(b.recv_multipart(copy=False), expect=("batch",)), "batch", meta, arrays)
        a.close(linger=0)
        b.close(linger=0)
    finally:
        ctx.term()


def test_encoder_stamps_sender_and_increasing_seq() -> None:
    encoder = Encoder("actor-3")
    first = decode(transmit(encoder("get_weights")))
    second = decode(transmit(encoder("stop", {"reason": "x"})))
    third = decode(transmit(encoder("get_weights")))
    assert [m.seq for m in (first, second, third)] == [1, 2, 3]
    assert {m.sender for m in (first, second, third)} == {"actor-3"}
    assert encoder.seq == 3


def test_other_obs_dtypes_round_trip() -> None:
    """obs/next_obs take the environment's dtype: image observations are uint8."""
    meta, arrays = _transitions(3)
    arrays["obs"] = _rng.integers(0, 256, size=(3, 4, 8, 8), dtype=np.uint8)
    arrays["next_obs"] = _rng.integers(0, 256, size=(3, 4, 8, 8), dtype=np.uint8)
    _assert_same(decode(transmit(encode("transitions", meta, arrays))), "transitions", meta, arrays)


def test_every_allowed_dtype_round_trips() -> None:
    arrays = {name: np.arange(6).reshape(2, 3).astype(name) for name in sorted(ALLOWED_DTYPES)}
    arrays["scalar"] = np.array(7, dtype=np.int64)  # a 0-d buffer, like BatchNorm's step counter
    msg = decode(transmit(encode("weights", {"version": 0}, arrays)))
    _assert_same(msg, "weights", {"version": 0}, arrays)


def test_zero_size_arrays() -> None:
    meta, arrays = EXAMPLES["actor_stats"]()
    arrays = {"episode_returns": np.zeros(0, np.float32), "episode_lengths": np.zeros(0, np.int64)}
    frames = transmit(encode("actor_stats", meta, arrays))
    assert frames[1:] == [b"", b""]
    _assert_same(decode(frames), "actor_stats", meta, arrays)
    empty = {"w": np.zeros((0, 3), np.float32), "b": np.zeros((4, 0, 2), np.float16)}
    _assert_same(decode(transmit(encode("weights", {"version": 1}, empty))), "weights", {"version": 1}, empty)
    meta, batch = _transitions(0)
    _assert_same(decode(transmit(encode("transitions", meta, batch))), "transitions", meta, batch)


def test_big_endian_and_strided_input_is_sent_little_endian_c_order() -> None:
    meta, arrays = _transitions(4)
    arrays["reward"] = arrays["reward"].astype(">f4")
    arrays["action"] = arrays["action"].astype(">i8")
    arrays["obs"] = np.asfortranarray(arrays["obs"].astype(">f4"))
    arrays["next_obs"] = np.ascontiguousarray(_obs(8)[::2])[:, ::-1]  # negative stride
    frames = transmit(encode("transitions", meta, arrays))
    assert frames[3] == arrays["reward"].astype("<f4").tobytes()
    msg = decode(frames)
    for name, sent in arrays.items():
        assert msg.arrays[name].dtype.byteorder in ("<", "=", "|")
        np.testing.assert_array_equal(msg.arrays[name], sent)


def test_encode_refuses_what_the_wire_cannot_carry() -> None:
    with pytest.raises(ValueError, match="unknown message kind"):
        encode("nope")
    for bad in (np.array(["ab"]), np.array([1 + 2j]), np.array([object()]), np.zeros(2, np.uint16)):
        with pytest.raises(ValueError, match="not allowed"):
            encode("weights", {"version": 1}, {"w": bad})


def test_expect_accepts_listed_kinds() -> None:
    assert decode(valid("stop"), expect=("weights", "stop")).kind == "stop"


# ---- rejections: header -----------------------------------------------------------------------------


def test_empty_frame_list() -> None:
    assert reason_of([]) == "empty"


@pytest.mark.parametrize(
    "header",
    [b"", b"\xc1", b"\x86\xa1v", b"\xff\xfe garbage", msgpack.packb({"v": 1}) + b"\x00"],
    ids=["empty", "reserved-byte", "truncated", "garbage", "trailing-bytes"],
)
def test_garbage_header(header: bytes) -> None:
    assert reason_of([header]) == "bad_header"


@pytest.mark.parametrize("header", [[1, 2, 3], 5, "v", None, b"\x01"])
def test_header_not_a_map(header: Any) -> None:
    assert reason_of([msgpack.packb(header, use_bin_type=True)]) == "bad_header"


def test_header_with_non_string_map_keys() -> None:
    assert reason_of([msgpack.packb({1: 1, "k": "stop"})]) == "bad_header"


V = PROTOCOL_VERSION


@pytest.mark.parametrize("version", [0, 1, V - 1, V + 1, -1, 2**40, str(V), None, True, float(V), [V]])
def test_wrong_version(version: Any) -> None:
    assert reason_of(with_header(valid("stop"), v=version)) == "wrong_version"


def test_missing_version() -> None:
    assert reason_of(with_header(valid("stop"), v=_DROP)) == "wrong_version"


@pytest.mark.parametrize("kind", ["nope", "", "STOP", 5, None, ["stop"], _DROP])
def test_unknown_kind(kind: Any) -> None:
    assert reason_of(with_header(valid("stop"), k=kind)) == "unknown_kind"


def test_unexpected_kind() -> None:
    assert reason_of(valid("stop"), expect=("weights",)) == "unexpected_kind"
    assert reason_of(valid("sample"), expect=()) == "unexpected_kind"


@pytest.mark.parametrize(
    "changes",
    [
        {"s": 5},
        {"s": None},
        {"s": b"bytes"},
        {"s": "x" * 257},
        {"s": _DROP},
        {"n": -1},
        {"n": True},
        {"n": 1.0},
        {"n": "1"},
        {"n": _DROP},
        {"m": []},
        {"m": None},
        {"m": _DROP},
        {"a": {}},
        {"a": None},
        {"a": _DROP},
        {"x": 1},
        {"extra": {}},
    ],
    ids=repr,
)
def test_bad_header_fields(changes: dict[str, Any]) -> None:
    assert reason_of(with_header(valid("stop"), **changes)) == "bad_header"


def test_sender_at_the_length_limit_is_fine() -> None:
    assert decode(with_header(valid("stop"), s="x" * 256)).sender == "x" * 256


def test_oversize_header() -> None:
    assert reason_of([b"\x00" * (MAX_HEADER_BYTES + 1)]) == "header_too_large"
    padded = with_meta(valid("stop"), reason="x" * MAX_HEADER_BYTES)
    assert reason_of(padded) == "header_too_large"


# ---- rejections: meta -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "changes"),
    [
        ("hello", {"role": _DROP}),
        ("hello", {"actor_index": _DROP}),
        ("weights", {"version": _DROP}),
        ("transitions", {"actor_index": _DROP}),
        ("hello", {"colour": "blue"}),
        ("get_weights", {"version": 1}),
        ("stop", {"reason": "x", "detail": "not a stop field"}),
        ("hello", {"role": 1}),
        ("hello", {"role": b"actor"}),
        ("hello", {"pid": "4242"}),
        ("hello", {"actor_index": True}),
        ("weights", {"version": False}),
        ("weights", {"version": 17.0}),
        ("welcome", {"config": [1, 2]}),
        ("replay_stats", {"rejected": "none"}),
        ("sample", {"beta": True}),
        ("sample", {"beta": "0.4"}),
        ("sample", {"beta": None}),
        ("sample", {"beta": math.nan}),
        ("sample", {"beta": math.inf}),
        ("actor_stats", {"epsilon": -math.inf}),
        ("actor_stats", {"steps_per_s": math.nan}),
    ],
    ids=repr,
)
def test_bad_meta(kind: str, changes: dict[str, Any]) -> None:
    assert reason_of(with_meta(valid(kind), **changes)) == "bad_meta"


def test_numbers_accept_ints() -> None:
    assert decode(with_meta(valid("sample"), beta=1)).meta["beta"] == 1


# ---- rejections: arrays -----------------------------------------------------------------------------


def test_too_many_arrays() -> None:
    arrays = {f"p{i}": np.zeros(1, np.float32) for i in range(MAX_ARRAYS + 1)}
    assert reason_of(transmit(encode("weights", {"version": 1}, arrays))) == "too_many_arrays"
    arrays.popitem()
    assert len(decode(transmit(encode("weights", {"version": 1}, arrays))).arrays) == MAX_ARRAYS


def test_wrong_frame_count() -> None:
    frames = valid("priorities")
    assert reason_of(frames[:-1]) == "frame_count"
    assert reason_of([*frames, b""]) == "frame_count"
    assert reason_of(frames[:1]) == "frame_count"
    assert reason_of([*valid("stop"), b"\x00" * 4]) == "frame_count"


def test_byte_length_mismatch() -> None:
    frames = valid("priorities")
    assert reason_of([*frames[:3], frames[3][:-1]]) == "bad_length"
    assert reason_of([*frames[:3], frames[3] + b"\x00"]) == "bad_length"
    assert reason_of([frames[0], b"", *frames[2:]]) == "bad_length"


@pytest.mark.parametrize(
    "dtype", ["object", "<U4", "|S4", "complex64", "uint16", "float32 ", "<f4", "f4", "", None, 4, ["float32"], {}]
)
def test_disallowed_dtype(dtype: Any) -> None:
    frames = valid("priorities")
    assert reason_of(with_spec(frames, 2, ["priority", dtype, [3]])) == "bad_dtype"


@pytest.mark.parametrize(
    "shape",
    [[-3], [3, -1], [1.5], ["3"], [None], [True], [[3]], 3, "3", None, {"0": 3}, [2**40]],
    ids=repr,
)
def test_bad_dimensions(shape: Any) -> None:
    assert reason_of(with_spec(valid("priorities"), 2, ["priority", "float32", shape])) == "bad_shape"


def test_too_many_dims() -> None:
    arrays = {"w": np.zeros((1,) * (MAX_RANK + 1), np.float32)}
    assert reason_of(transmit(encode("weights", {"version": 1}, arrays))) == "bad_shape"
    arrays = {"w": np.zeros((1,) * MAX_RANK, np.float32)}
    assert decode(transmit(encode("weights", {"version": 1}, arrays))).arrays["w"].ndim == MAX_RANK


def test_zero_size_shape_too_large_to_represent() -> None:
    """Zero elements match an empty frame, but numpy cannot even describe a 0 x 2^39 x 2^39 array."""
    frames = transmit(encode("weights", {"version": 1}, {"w": np.zeros(0, np.float32)}))
    assert reason_of(with_spec(frames, 0, ["w", "float32", [0, 2**39, 2**39]])) == "bad_shape"


@pytest.mark.parametrize(
    "spec", [["priority", "float32"], ["priority", "float32", [3], 0], "priority", None, {"n": 1}, ["", "float32", [3]]]
)
def test_malformed_array_spec(spec: Any) -> None:
    assert reason_of(with_spec(valid("priorities"), 2, spec)) == "bad_array"


@pytest.mark.parametrize("name", [5, None, b"priority", "x" * 257])
def test_bad_array_name(name: Any) -> None:
    assert reason_of(with_spec(valid("priorities"), 2, [name, "float32", [3]])) == "bad_array"


def test_duplicate_array_name() -> None:
    frames = transmit(encode("weights", {"version": 1}, {"a": np.zeros(2, np.float32), "b": np.ones(2, np.float32)}))
    assert reason_of(with_spec(frames, 1, ["a", "float32", [2]])) == "bad_array"
    frames = valid("priorities")
    assert reason_of(with_spec(frames, 1, ["index", "int64", [3]])) == "bad_array"


@pytest.mark.parametrize(
    ("kind", "drop", "add"),
    [
        ("transitions", "priority", None),
        ("transitions", "version", None),
        ("transitions", None, "env_index"),
        ("batch", "weight", None),
        ("priorities", "id", None),
        ("actor_stats", "episode_lengths", None),
        ("eval_result", None, "seeds"),
        ("stop", None, "payload"),
        ("sample", None, "obs"),
    ],
)
def test_missing_or_extra_array(kind: str, drop: str | None, add: str | None) -> None:
    meta, arrays = EXAMPLES[kind]()
    batch = next(iter(arrays.values())).shape[0] if arrays else 1
    if drop:
        del arrays[drop]
    if add:
        arrays[add] = np.zeros(batch, np.int64)
    assert reason_of(transmit(encode(kind, meta, arrays))) == "bad_arrays"


@pytest.mark.parametrize(
    ("kind", "name", "dtype"),
    [
        ("transitions", "action", "float64"),
        ("transitions", "action", "int32"),
        ("transitions", "reward", "float64"),
        ("transitions", "priority", "float16"),
        ("transitions", "version", "int32"),
        ("batch", "index", "int32"),
        ("batch", "weight", "float64"),
        ("priorities", "id", "float64"),
        ("actor_stats", "episode_lengths", "float32"),
        ("eval_result", "returns", "float64"),
    ],
)
def test_wrong_dtype_for_a_fixed_array(kind: str, name: str, dtype: str) -> None:
    meta, arrays = EXAMPLES[kind]()
    arrays[name] = arrays[name].astype(dtype)
    assert reason_of(transmit(encode(kind, meta, arrays))) == "bad_dtype"


@pytest.mark.parametrize("kind", sorted(k for k, s in SCHEMAS.items() if s.batched))
def test_batched_arrays_must_share_first_dimension(kind: str) -> None:
    meta, arrays = EXAMPLES[kind]()
    name = sorted(arrays)[-1]
    arrays[name] = np.concatenate([arrays[name], arrays[name][:1]])
    assert reason_of(transmit(encode(kind, meta, arrays))) == "bad_shape"


def test_batched_arrays_may_not_be_scalars() -> None:
    meta = {"weight_version": 1}
    arrays = {"returns": np.array(1.0, np.float32), "lengths": np.array(5, np.int64)}
    assert reason_of(transmit(encode("eval_result", meta, arrays))) == "bad_shape"


def test_obs_of_different_ranks_still_share_the_batch() -> None:
    meta, arrays = _transitions(2)
    arrays["obs"] = arrays["obs"][:, :2]  # a receiver checks obs_shape; the codec checks only the batch
    assert decode(transmit(encode("transitions", meta, arrays))).arrays["obs"].shape == (2, 2)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    ("kind", "name"),
    [("transitions", "reward"), ("transitions", "obs"), ("batch", "weight"), ("priorities", "priority")],
)
def test_non_finite_float_arrays(kind: str, name: str, bad: float) -> None:
    meta, arrays = EXAMPLES[kind]()
    values = arrays[name].copy()
    values.flat[-1] = bad
    arrays[name] = values
    assert reason_of(transmit(encode(kind, meta, arrays))) == "non_finite"


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_non_finite_in_any_float_width(dtype: str) -> None:
    arrays = {"w": np.array([[1.0, np.nan]], dtype=dtype)}
    assert reason_of(transmit(encode("weights", {"version": 1}, arrays))) == "non_finite"


def test_integer_arrays_are_not_checked_for_finiteness() -> None:
    arrays = {"w": np.array([np.iinfo(np.int64).min, -1], dtype=np.int64)}
    assert decode(transmit(encode("weights", {"version": 1}, arrays))).arrays["w"][0] == np.iinfo(np.int64).min


# ---- property tests ---------------------------------------------------------------------------------

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


def decodes_or_refuses(frames: list[Any], **kwargs: Any) -> Message | None:
    """The decoder's contract: a Message or a DecodeError, nothing else."""
    try:
        return decode(frames, **kwargs)
    except DecodeError as err:
        assert err.reason and isinstance(err.reason, str)
        return None


def assert_consistent(msg: Message, frames: list[bytes]) -> None:
    """A decoded message satisfies its schema and its arrays are exactly what the header declares."""
    header = msgpack.unpackb(frames[0])
    assert type(header["v"]) is int and header["v"] == PROTOCOL_VERSION
    assert msg.kind == header["k"] and msg.kind in SCHEMAS
    schema = SCHEMAS[msg.kind]
    assert set(schema.meta) <= set(msg.meta) <= set(schema.meta) | set(schema.optional_meta)
    for key, value in msg.meta.items():
        expected = schema.meta.get(key) or schema.optional_meta[key]
        assert isinstance(value, expected) and not isinstance(value, bool)
        assert not isinstance(value, float) or math.isfinite(value)
    specs = header["a"]
    assert list(msg.arrays) == [spec[0] for spec in specs]
    for (name, dtype, shape), frame in zip(specs, frames[1:], strict=True):
        array = msg.arrays[name]
        assert dtype in ALLOWED_DTYPES and array.dtype == np.dtype(dtype).newbyteorder("<")
        assert list(array.shape) == shape and len(shape) <= MAX_RANK
        assert array.tobytes() == frame
        assert array.dtype.kind != "f" or np.isfinite(array).all()
    if not schema.any_arrays:
        assert set(msg.arrays) == set(schema.arrays)
        for name, dtypes in schema.arrays.items():
            assert dtypes is None or msg.arrays[name].dtype.name in dtypes
    if schema.batched and msg.arrays:
        assert len({a.shape[0] if a.ndim else -1 for a in msg.arrays.values()} - {-1}) == 1
        assert all(a.ndim for a in msg.arrays.values())


@FUZZ
@given(frames=st.lists(st.binary(max_size=64), max_size=6))
def test_random_frames_never_crash_the_decoder(frames: list[bytes]) -> None:
    decodes_or_refuses(frames)


@FUZZ
@given(header=msgpack_values, data=st.lists(st.binary(max_size=16), max_size=3))
def test_random_msgpack_headers_never_crash_the_decoder(header: Any, data: list[bytes]) -> None:
    decodes_or_refuses([msgpack.packb(header, use_bin_type=True), *data])


@FUZZ
@given(
    kind=st.sampled_from(sorted(SCHEMAS)),
    fields=st.fixed_dictionaries(
        {},
        optional={
            "v": msgpack_values,
            "k": st.sampled_from(sorted(SCHEMAS)) | msgpack_values,
            "s": msgpack_values,
            "n": msgpack_values,
            "m": msgpack_values,
            "a": msgpack_values,
        },
    ),
)
def test_random_header_fields_never_crash_the_decoder(kind: str, fields: dict[str, Any]) -> None:
    frames = with_header(valid(kind), **fields)
    msg = decodes_or_refuses(frames)
    if msg is not None:
        assert_consistent(msg, frames)


_PLAUSIBLE_DTYPES = sorted(ALLOWED_DTYPES) + ["object", "<U4", "complex64", "uint16", "<f4", ""]
_DIMS = st.integers(min_value=-2, max_value=10) | st.sampled_from([0, 2**39, 2**40, 2**62]) | msgpack_values


@st.composite
def _mutated_spec(draw: st.DrawFn, spec: list[Any], names: list[str]) -> Any:
    """A spec with one part changed to something plausible: another name, dtype or a reshaped shape."""
    name, dtype, shape = spec
    part = draw(st.sampled_from(["name", "dtype", "shape", "reshape", "anything"]))
    if part == "name":
        return [draw(st.sampled_from([*names, "", "extra"]) | st.text(max_size=4)), dtype, shape]
    if part == "dtype":
        return [name, draw(st.sampled_from(_PLAUSIBLE_DTYPES) | msgpack_values), shape]
    if part == "shape":
        return [name, dtype, draw(st.lists(_DIMS, max_size=MAX_RANK + 1))]
    if part == "reshape":  # same element count, different layout: still the right byte length
        size = math.prod(shape)
        return [name, dtype, draw(st.sampled_from([[size], [1, size], [size, 1], [], [0, size]]))]
    return draw(msgpack_values)


@st.composite
def near_valid(draw: st.DrawFn) -> list[bytes]:
    """A valid message of a random kind with one random mutation applied."""
    kind = draw(st.sampled_from(sorted(SCHEMAS)))
    frames = valid(kind)
    header = msgpack.unpackb(frames[0])
    mutation = draw(
        st.sampled_from(
            ["flip", "insert", "delete", "truncate", "extend", "drop_frame", "dup_frame"]
            + ["field", "meta", "spec", "empty"]
        )
    )
    raw = bytearray(frames[0])
    if mutation == "flip":
        at = draw(st.integers(0, len(raw) - 1))
        raw[at] ^= draw(st.integers(1, 255))
        return [bytes(raw), *frames[1:]]
    if mutation == "insert":
        at = draw(st.integers(0, len(raw)))
        return [bytes(raw[:at] + draw(st.binary(min_size=1, max_size=4)) + raw[at:]), *frames[1:]]
    if mutation == "delete":
        at = draw(st.integers(0, len(raw) - 1))
        return [bytes(raw[:at] + raw[at + draw(st.integers(1, 4)) :]), *frames[1:]]
    if mutation in ("truncate", "extend", "drop_frame", "dup_frame"):
        if len(frames) == 1:
            return [*frames, draw(st.binary(max_size=8))]
        at = draw(st.integers(1, len(frames) - 1))
        if mutation == "truncate":
            frames[at] = frames[at][: draw(st.integers(0, max(len(frames[at]) - 1, 0)))]
        elif mutation == "extend":
            frames[at] = frames[at] + draw(st.binary(min_size=1, max_size=8))
        elif mutation == "drop_frame":
            del frames[at]
        else:
            frames.insert(at, frames[at])
        return frames
    if mutation == "field":
        key = draw(st.sampled_from(["v", "k", "s", "n"]))
        plausible = {
            "v": st.sampled_from([0, 1, 2, -1, True, False, 1.0, "1", None]),
            "k": st.sampled_from(sorted(SCHEMAS)),
            "s": st.text(max_size=300),
            "n": st.integers(min_value=-5, max_value=2**64 - 1) | st.sampled_from([True, 1.5]),
        }[key]
        return with_header(frames, **{key: draw(st.one_of(plausible, msgpack_values))})
    if mutation == "meta":
        all_keys = sorted({k for s in SCHEMAS.values() for k in (*s.meta, *s.optional_meta)})
        key = draw(st.sampled_from(all_keys) | st.text(max_size=4))
        value = draw(
            st.sampled_from([0, -1, 1, 2**63 - 1, 0.5, math.nan, math.inf, True, "", "actor", {}, {"a": 1}, []])
            | msgpack_values
        )
        return with_meta(frames, **{key: _DROP if value is None and key in header["m"] else value})
    specs = header["a"]
    if not specs:
        return with_header(frames, a=[draw(msgpack_values)])
    at = draw(st.integers(0, len(specs) - 1))
    if mutation == "empty":  # an empty frame re-declared with a zero dimension among arbitrary others
        frames[at + 1] = b""
        name, dtype, _shape = specs[at]
        return with_spec(frames, at, [name, dtype, [0, *draw(st.lists(_DIMS, max_size=MAX_RANK - 1))]])
    names = [spec[0] for spec in specs]
    return with_spec(frames, at, draw(_mutated_spec(specs[at], names)))


@FUZZ
@given(frames=near_valid())
def test_near_valid_messages_decode_consistently_or_are_refused(frames: list[bytes]) -> None:
    msg = decodes_or_refuses(frames)
    if msg is not None:
        assert_consistent(msg, frames)


def test_every_header_of_a_kind_starts_with_its_subscription_prefix() -> None:
    """SUB sockets subscribe by kind with these prefixes: one that matched another kind's headers, or
    missed some of its own, would hand an actor 6.75 MB it does not want or hide a `stop` from it."""
    prefixes = {kind: kind_prefix(kind) for kind in SCHEMAS}
    for kind, prefix in prefixes.items():
        meta = {"a": 1, "b": [1, 2]} if kind != "stop" else {"reason": "x"}
        for sender, seq in (("", 0), ("learner", 2**40)):
            header = encode(kind, meta, {"x": np.zeros(3, np.float32)}, sender=sender, seq=seq)[0]
            assert header.startswith(prefix)
            others = [other for other, p in prefixes.items() if other != kind and header.startswith(p)]
            assert not others, f"{kind} headers also match the prefix of {others}"
